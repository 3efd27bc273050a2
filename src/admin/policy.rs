//! Key policies: the seed's four-statement template, and a linter that explains any policy.

use serde_json::{json, Value};

/// Management actions granted to key administrators by the template (the seed's list).
pub const ADMIN_ACTIONS: [&str; 14] = [
    "kms:Create*",
    "kms:Describe*",
    "kms:Enable*",
    "kms:List*",
    "kms:Put*",
    "kms:Update*",
    "kms:Revoke*",
    "kms:Disable*",
    "kms:Get*",
    "kms:Delete*",
    "kms:TagResource",
    "kms:UntagResource",
    "kms:ScheduleKeyDeletion",
    "kms:CancelKeyDeletion",
];

/// Cryptographic actions granted to key users by the template.
pub const USER_ACTIONS: [&str; 5] = [
    "kms:Encrypt",
    "kms:Decrypt",
    "kms:ReEncrypt*",
    "kms:GenerateDataKey*",
    "kms:DescribeKey",
];

/// Grant actions key users get for AWS resources (EBS, EFS, RDS) only.
pub const GRANT_ACTIONS: [&str; 3] = ["kms:CreateGrant", "kms:ListGrants", "kms:RevokeGrant"];

/// A key policy document.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyPolicy(Value);

fn principals(list: &[String]) -> Value {
    match list {
        [one] => json!({ "AWS": one }),
        many => json!({ "AWS": many }),
    }
}

impl KeyPolicy {
    /// The seed's four statements: the account root may do anything (so the key can never
    /// become unmanageable), `admins` manage it, `users` use it, and `users` may create grants
    /// for AWS resources only (`kms:GrantIsForAWSResource`), so EBS, EFS and RDS can attach it.
    ///
    /// # Errors
    /// When the account ID is not 12 digits, or `admins` or `users` is empty.
    pub fn template(
        account_id: &str,
        admins: &[String],
        users: &[String],
    ) -> Result<Self, crate::Error> {
        if account_id.len() != 12 || !account_id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(crate::Error::Misuse(format!(
                "account ID {account_id:?} is not 12 digits"
            )));
        }
        if admins.is_empty() || users.is_empty() {
            return Err(crate::Error::Misuse(
                "a key policy needs at least one administrator and one user principal".into(),
            ));
        }
        Ok(KeyPolicy(json!({
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "Enable IAM User Permissions",
                    "Effect": "Allow",
                    "Principal": { "AWS": format!("arn:aws:iam::{account_id}:root") },
                    "Action": "kms:*",
                    "Resource": "*"
                },
                {
                    "Sid": "Allow access for Key Administrators",
                    "Effect": "Allow",
                    "Principal": principals(admins),
                    "Action": ADMIN_ACTIONS,
                    "Resource": "*"
                },
                {
                    "Sid": "Allow use of the key",
                    "Effect": "Allow",
                    "Principal": principals(users),
                    "Action": USER_ACTIONS,
                    "Resource": "*"
                },
                {
                    "Sid": "Allow attachment of persistent resources",
                    "Effect": "Allow",
                    "Principal": principals(users),
                    "Action": GRANT_ACTIONS,
                    "Resource": "*",
                    "Condition": { "Bool": { "kms:GrantIsForAWSResource": "true" } }
                }
            ]
        })))
    }

    /// Parses a policy document.
    ///
    /// # Errors
    /// [`PolicyError`] with the line and column of bad JSON.
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        serde_json::from_str(text)
            .map(KeyPolicy)
            .map_err(|e| PolicyError {
                line: e.line(),
                column: e.column(),
                message: e.to_string(),
            })
    }

    /// The document as pretty JSON, as `aws kms create-key --policy file://...` takes it.
    pub fn to_json_pretty(&self) -> String {
        serde_json::to_string_pretty(&self.0).expect("a JSON value serializes")
    }

    /// The JSON value.
    pub fn as_json(&self) -> &Value {
        &self.0
    }

    /// Explains who can manage, use and grant the key, and warns on risky statements.
    pub fn lint(&self) -> PolicyReport {
        lint(&self.0)
    }
}

/// A policy that is not valid JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// 1-based line of the error.
    pub line: usize,
    /// 1-based column of the error.
    pub column: usize,
    /// What the parser said.
    pub message: String,
}

impl std::fmt::Display for PolicyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the key policy is not valid JSON at line {}, column {}: {}",
            self.line, self.column, self.message
        )
    }
}

impl std::error::Error for PolicyError {}

/// What a policy allows, in plain words, and what looks wrong.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyReport {
    /// Principals that may manage the key (change its policy, disable, delete, …).
    pub managers: Vec<String>,
    /// Principals that may use the key to encrypt or decrypt.
    pub users: Vec<String>,
    /// Principals that may create grants, with whether only for AWS resources.
    pub granters: Vec<(String, bool)>,
    /// Notes that need no change.
    pub notes: Vec<String>,
    /// Problems worth fixing.
    pub warnings: Vec<String>,
}

impl PolicyReport {
    /// Whether the policy passed without warnings.
    pub fn is_clean(&self) -> bool {
        self.warnings.is_empty()
    }
}

impl std::fmt::Display for PolicyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |v: &[String]| {
            if v.is_empty() {
                "nobody".to_owned()
            } else {
                v.join(", ")
            }
        };
        writeln!(f, "Who can manage the key: {}", list(&self.managers))?;
        writeln!(f, "Who can use the key:    {}", list(&self.users))?;
        let granters: Vec<String> = self
            .granters
            .iter()
            .map(|(p, aws_only)| {
                if *aws_only {
                    format!("{p} (for AWS resources only)")
                } else {
                    format!("{p} (unrestricted)")
                }
            })
            .collect();
        writeln!(f, "Who can grant the key:  {}", list(&granters))?;
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        for w in &self.warnings {
            writeln!(f, "warning: {w}")?;
        }
        if self.warnings.is_empty() {
            writeln!(f, "no warnings")?;
        }
        Ok(())
    }
}

/// KMS actions by what they let a principal do with a key. Grant bookkeeping (list, revoke,
/// retire) is the grant statement's business, not management.
const MANAGE: &[&str] = &[
    "CancelKeyDeletion",
    "ConnectCustomKeyStore",
    "CreateAlias",
    "CreateCustomKeyStore",
    "CreateKey",
    "DeleteAlias",
    "DeleteCustomKeyStore",
    "DeleteImportedKeyMaterial",
    "DisableKey",
    "DisableKeyRotation",
    "DisconnectCustomKeyStore",
    "EnableKey",
    "EnableKeyRotation",
    "GetKeyPolicy",
    "GetKeyRotationStatus",
    "GetParametersForImport",
    "ImportKeyMaterial",
    "ListAliases",
    "ListKeyPolicies",
    "ListKeyRotations",
    "ListResourceTags",
    "PutKeyPolicy",
    "ReplicateKey",
    "RotateKeyOnDemand",
    "ScheduleKeyDeletion",
    "TagResource",
    "UntagResource",
    "UpdateAlias",
    "UpdateCustomKeyStore",
    "UpdateKeyDescription",
    "UpdatePrimaryRegion",
];
const USE: &[&str] = &[
    "Decrypt",
    "DeriveSharedSecret",
    "Encrypt",
    "GenerateDataKey",
    "GenerateDataKeyPair",
    "GenerateDataKeyPairWithoutPlaintext",
    "GenerateDataKeyWithoutPlaintext",
    "GenerateMac",
    "ReEncryptFrom",
    "ReEncryptTo",
    "Sign",
    "Verify",
    "VerifyMac",
];

/// IAM-style wildcard match (`*` any run, `?` one character), case-insensitive.
fn wildcard(pattern: &str, name: &str) -> bool {
    fn go(p: &[u8], n: &[u8]) -> bool {
        match p.split_first() {
            None => n.is_empty(),
            Some((b'*', rest)) => (0..=n.len()).any(|i| go(rest, &n[i..])),
            Some((b'?', rest)) => !n.is_empty() && go(rest, &n[1..]),
            Some((c, rest)) => {
                n.first().is_some_and(|d| d.eq_ignore_ascii_case(c)) && go(rest, &n[1..])
            }
        }
    }
    go(pattern.as_bytes(), name.as_bytes())
}

fn strings(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

fn matches_any(patterns: &[String], catalog: &[&str]) -> bool {
    catalog.iter().any(|action| {
        patterns.iter().any(|p| {
            p.split_once(':')
                .is_some_and(|(svc, a)| wildcard(svc, "kms") && wildcard(a, action))
                || p == "*"
        })
    })
}

fn push_unique(list: &mut Vec<String>, items: &[String]) {
    for i in items {
        if !list.contains(i) {
            list.push(i.clone());
        }
    }
}

fn is_account_root(principal: &str) -> bool {
    let p = principal.trim();
    (p.starts_with("arn:aws") && p.ends_with(":root") && p.contains(":iam::"))
        || (p.len() == 12 && p.bytes().all(|b| b.is_ascii_digit()))
}

fn grant_for_aws_resource_only(condition: Option<&Value>) -> bool {
    let Some(cond) = condition.and_then(Value::as_object) else {
        return false;
    };
    cond.iter().any(|(op, body)| {
        op.eq_ignore_ascii_case("Bool")
            && body.as_object().is_some_and(|m| {
                m.iter().any(|(k, v)| {
                    k.eq_ignore_ascii_case("kms:GrantIsForAWSResource")
                        && (v == "true" || v == &Value::Bool(true) || v == &json!(["true"]))
                })
            })
    })
}

fn lint(doc: &Value) -> PolicyReport {
    let mut r = PolicyReport::default();
    match doc.get("Version").and_then(Value::as_str) {
        Some("2012-10-17") => {}
        Some("2008-10-17") => r
            .warnings
            .push("Version 2008-10-17 is the old policy language: use \"2012-10-17\"".into()),
        Some(v) => r.warnings.push(format!(
            "Version {v:?} is not a policy language version: use \"2012-10-17\""
        )),
        None => r
            .warnings
            .push("no Version: add \"Version\": \"2012-10-17\"".into()),
    }
    let statements: Vec<&Value> = match doc.get("Statement") {
        Some(Value::Array(a)) => a.iter().collect(),
        Some(s @ Value::Object(_)) => vec![s],
        _ => {
            r.warnings.push(
                "no Statement: the policy grants nothing, so nobody can use or manage the key"
                    .into(),
            );
            return r;
        }
    };
    let mut root_can_manage = false;
    for (i, st) in statements.iter().enumerate() {
        let name = st
            .get("Sid")
            .and_then(Value::as_str)
            .map(|s| format!("statement {:?}", s))
            .unwrap_or_else(|| format!("statement {}", i + 1));
        if st.get("Effect").and_then(Value::as_str) != Some("Allow") {
            if st.get("Effect").and_then(Value::as_str) != Some("Deny") {
                r.warnings
                    .push(format!("{name}: Effect must be \"Allow\" or \"Deny\""));
            } else {
                r.notes
                    .push(format!("{name} denies {:?}", strings(st.get("Action"))));
            }
            continue;
        }
        let principal = st.get("Principal");
        let mut who = match principal {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Object(m)) => m.values().flat_map(|v| strings(Some(v))).collect(),
            _ => Vec::new(),
        };
        who.sort();
        let everyone = who.iter().any(|p| p == "*");
        let condition = st.get("Condition");
        if everyone && condition.is_none() {
            r.warnings.push(format!(
                "{name}: \"Principal\": \"*\" without a Condition opens the key to every AWS account: name the principals or add a condition"
            ));
        }
        if let Some(res) = st.get("Resource") {
            if strings(Some(res)) != ["*"] {
                r.warnings.push(format!(
                    "{name}: in a key policy \"Resource\" should be \"*\" (this key); other values match nothing"
                ));
            }
        } else {
            r.warnings
                .push(format!("{name}: no Resource: use \"Resource\": \"*\""));
        }
        if st.get("NotAction").is_some() || st.get("NotPrincipal").is_some() {
            r.warnings.push(format!(
                "{name}: NotAction/NotPrincipal grant more than they seem: list what is allowed instead"
            ));
        }
        let actions = strings(st.get("Action"));
        let manage = matches_any(&actions, MANAGE);
        let usage = matches_any(&actions, USE);
        let grant = matches_any(&actions, &["CreateGrant"]);
        let root_only = !who.is_empty() && who.iter().all(|p| is_account_root(p));
        if manage {
            push_unique(&mut r.managers, &who);
            if root_only && matches_any(&actions, &["PutKeyPolicy"]) && condition.is_none() {
                root_can_manage = true;
            }
        }
        if usage {
            push_unique(&mut r.users, &who);
        }
        if manage && usage && !root_only {
            r.warnings.push(format!(
                "{name}: grants both management and encrypt/decrypt to {}: give administrators and users separate statements so either role can be revoked alone",
                who.join(", ")
            ));
        }
        if grant {
            let aws_only = grant_for_aws_resource_only(condition);
            for p in &who {
                if !r.granters.iter().any(|(q, _)| q == p) {
                    r.granters.push((p.clone(), aws_only));
                }
            }
            // Administrators hold CreateGrant through `kms:Create*` in AWS's own default policy;
            // the risk is a grant right given to those who also use the key, or named outright.
            let named = actions
                .iter()
                .any(|a| a.eq_ignore_ascii_case("kms:CreateGrant"));
            if !aws_only && !root_only && (usage || named) {
                r.warnings.push(format!(
                    "{name}: allows kms:CreateGrant without the condition \"Bool\": {{\"kms:GrantIsForAWSResource\": \"true\"}}: grantees could pass the key's use on to anyone"
                ));
            }
        }
    }
    if !root_can_manage {
        r.warnings.push(
            "no statement keeps the account root able to manage the key: if the named principals are deleted the key becomes unmanageable; add the \"Enable IAM User Permissions\" statement (arn:aws:iam::ACCOUNT:root, kms:*)".into(),
        );
    }
    let both: Vec<String> = r
        .managers
        .iter()
        .filter(|m| !is_account_root(m) && r.users.contains(m))
        .cloned()
        .collect();
    if !both.is_empty() {
        r.notes.push(format!(
            "{} both administer and use the key (in separate statements, so each role can be revoked alone)",
            both.join(", ")
        ));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_lints_clean_and_explains_roles() {
        let admin = vec!["arn:aws:iam::111122223333:user/alice".to_owned()];
        let users = vec![
            "arn:aws:iam::111122223333:user/app".to_owned(),
            "arn:aws:iam::111122223333:role/ebs".to_owned(),
        ];
        let p = KeyPolicy::template("111122223333", &admin, &users).unwrap();
        let r = p.lint();
        assert!(r.is_clean(), "{r}");
        assert!(r
            .managers
            .contains(&"arn:aws:iam::111122223333:root".to_owned()));
        assert!(r.managers.contains(&admin[0]));
        assert!(users.iter().all(|u| r.users.contains(u)), "{r}");
        assert!(r.granters.iter().any(|(p, aws)| p == &users[0] && *aws));
        let doc = p.as_json();
        assert_eq!(doc["Statement"].as_array().unwrap().len(), 4);
        assert!(KeyPolicy::template("12", &admin, &users).is_err());
    }

    #[test]
    fn each_risk_is_warned() {
        let cases = [
            (
                r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::1:user/a"},"Action":"kms:*","Resource":"*"}]}"#,
                "account root",
            ),
            (
                r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:root"},"Action":"kms:*","Resource":"*"},{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:user/a"},"Action":["kms:Put*","kms:Decrypt"],"Resource":"*"}]}"#,
                "both management and encrypt",
            ),
            (
                r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:root"},"Action":"kms:*","Resource":"*"},{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:user/a"},"Action":"kms:CreateGrant","Resource":"*"}]}"#,
                "GrantIsForAWSResource",
            ),
            (
                r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:root"},"Action":"kms:*","Resource":"*"},{"Effect":"Allow","Principal":"*","Action":"kms:Decrypt","Resource":"*"}]}"#,
                "every AWS account",
            ),
            (
                r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:root"},"Action":"kms:*","Resource":"arn:aws:kms:us-east-1:111122223333:key/x"}]}"#,
                "\"Resource\" should be",
            ),
            (
                r#"{"Version":"2012-10-18","Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:root"},"Action":"kms:*","Resource":"*"}]}"#,
                "Version",
            ),
        ];
        for (doc, words) in cases {
            let r = KeyPolicy::parse(doc).unwrap().lint();
            assert!(r.warnings.iter().any(|w| w.contains(words)), "{words}: {r}");
        }
    }

    #[test]
    fn bad_json_reports_line_and_column() {
        let err = KeyPolicy::parse("{\n  \"Version\": \"2012-10-17\",\n  \"Statement\": [,]\n}")
            .unwrap_err();
        assert_eq!((err.line, err.column), (3, 17));
        assert!(err.to_string().contains("line 3, column 17"));
    }

    #[test]
    fn wildcards() {
        assert!(wildcard("Create*", "CreateGrant"));
        assert!(wildcard("*", "Decrypt"));
        assert!(wildcard("ReEncrypt*", "reencryptfrom"));
        assert!(!wildcard("Get*", "GenerateDataKey"));
        assert!(wildcard("GenerateDataKey?air", "GenerateDataKeyPair"));
    }
}
