//! The `key` command group: the seed's key policies and KMS keys.

use std::path::Path;

use clap::Subcommand;
use kms_envelope::admin::{KeyAdmin, KeyPolicy};
use kms_envelope::keyring::load_aws_config;
use kms_envelope::Error;

use crate::args::{strip_file_uri, AwsArgs};
use crate::exit::{code_of, failure, io_error, io_failure, usage, Code, Failure};
use crate::term::{print_json, terminal_safe, to_stderr, to_stdout};

#[derive(Subcommand)]
pub enum KeyCommand {
    /// Print the seed's four-statement key policy for an account, administrators and users.
    Template {
        /// The 12-digit account ID.
        #[arg(long, value_name = "ID")]
        account: String,
        /// Key administrator principal ARN (repeatable).
        #[arg(long = "admin", value_name = "ARN", required = true)]
        admins: Vec<String>,
        /// Key user principal ARN (repeatable).
        #[arg(long = "user", value_name = "ARN", required = true)]
        users: Vec<String>,
    },
    /// Explain who can manage, use and grant a key under a policy; exit 1 on warnings.
    Lint {
        /// The policy file (`file://` prefix accepted).
        file: String,
    },
    /// Create a symmetric KMS key with a policy, tags, a description and an alias.
    Create {
        /// The key policy (`file://FILE`).
        #[arg(long, value_name = "file://FILE")]
        policy: String,
        /// A tag, as the AWS CLI takes it: TagKey=K,TagValue=V (repeatable).
        #[arg(long = "tags", value_name = "TagKey=K,TagValue=V", num_args = 1..)]
        tags: Vec<String>,
        /// The key's description.
        #[arg(long)]
        description: Option<String>,
        /// Also create this alias (alias/NAME) for the new key.
        #[arg(long, value_name = "alias/NAME")]
        alias_name: Option<String>,
        /// Create the key even if the policy linter warns.
        #[arg(long)]
        allow_policy_warnings: bool,
    },
    /// Point an alias at a key.
    CreateAlias {
        /// The alias (alias/NAME).
        #[arg(long, value_name = "alias/NAME")]
        alias_name: String,
        /// The key ID or ARN.
        #[arg(long, value_name = "ID")]
        target_key_id: String,
    },
    /// List aliases, all or one key's.
    ListAliases {
        /// Only this key's aliases.
        #[arg(long, value_name = "ID")]
        key_id: Option<String>,
    },
    /// Describe a key.
    Describe {
        /// Key ID, ARN, alias name or alias ARN.
        #[arg(long, value_name = "ID")]
        key_id: String,
    },
    /// Enable a key.
    Enable {
        /// Key ID or ARN.
        #[arg(long, value_name = "ID")]
        key_id: String,
    },
    /// Disable a key (nothing encrypts or decrypts under it until enabled).
    Disable {
        /// Key ID or ARN.
        #[arg(long, value_name = "ID")]
        key_id: String,
    },
    /// Schedule a key's deletion after a waiting period.
    ScheduleDeletion {
        /// Key ID or ARN.
        #[arg(long, value_name = "ID")]
        key_id: String,
        /// Days to wait, 7 to 30.
        #[arg(long, default_value_t = 30)]
        pending_window_in_days: i32,
    },
    /// Cancel a scheduled deletion (the key stays disabled until enabled).
    CancelDeletion {
        /// Key ID or ARN.
        #[arg(long, value_name = "ID")]
        key_id: String,
    },
}

fn parse_tags(tags: &[String]) -> Result<Vec<(String, String)>, Failure> {
    tags.iter()
        .map(|t| {
            let mut key = None;
            let mut value = None;
            for part in t.split(',') {
                match part.split_once('=') {
                    Some(("TagKey", k)) => key = Some(k.to_owned()),
                    Some(("TagValue", v)) => value = Some(v.to_owned()),
                    _ => {}
                }
            }
            match (key, value) {
                (Some(k), Some(v)) if !k.is_empty() => Ok((k, v)),
                _ => Err(usage(format!(
                    "--tags {t:?}: write tags as TagKey=K,TagValue=V"
                ))),
            }
        })
        .collect()
}

fn read_policy(arg: &str) -> Result<(String, KeyPolicy), Failure> {
    let path = Path::new(strip_file_uri(arg));
    let text =
        std::fs::read_to_string(path).map_err(|e| io_failure("cannot read policy", path, e))?;
    let policy = KeyPolicy::parse(&text).map_err(|e| usage(format!("{}: {e}", path.display())))?;
    Ok((text, policy))
}

/// Runs a `key` command.
pub fn run(aws: &AwsArgs, cmd: &KeyCommand) -> Result<(), Failure> {
    match cmd {
        KeyCommand::Template {
            account,
            admins,
            users,
        } => {
            let p =
                KeyPolicy::template(account, admins, users).map_err(|e| usage(e.to_string()))?;
            return to_stdout(&format!("{}\n", p.to_json_pretty()));
        }
        KeyCommand::Lint { file } => {
            let (_, policy) = read_policy(file)?;
            let report = policy.lint();
            to_stdout(&terminal_safe(&report.to_string(), true))?;
            return if report.is_clean() {
                Ok(())
            } else {
                Err(Failure {
                    code: Code::LINT_WARNINGS,
                    message: format!("{file}: {} warning(s)", report.warnings.len()),
                })
            };
        }
        _ => {}
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| io_error(format!("cannot start a runtime: {e}")))?;
    rt.block_on(async {
        let config = load_aws_config(aws.profile.as_deref(), aws.region.as_deref(), aws.endpoint_url.as_deref()).await;
        let admin = KeyAdmin::new(&config);
        let kms = |e: Error| failure("KMS", e);
        // A refused argument (alias name, waiting period) is the caller's to fix: its message
        // alone, not under "KMS:"; the code is still code_of's.
        let argument_or_kms = |e: Error| match &e {
            Error::Misuse(m) => Failure {
                code: code_of(&e),
                message: m.clone(),
            },
            _ => kms(e),
        };
        match cmd {
            KeyCommand::Create { policy, tags, description, alias_name, allow_policy_warnings } => {
                let (text, parsed) = read_policy(policy)?;
                let report = parsed.lint();
                if !report.is_clean() {
                    to_stderr(&report.to_string(), true);
                    if !allow_policy_warnings {
                        return Err(usage(format!(
                            "{policy}: the policy has {} warning(s); fix it, or pass --allow-policy-warnings",
                            report.warnings.len()
                        )));
                    }
                }
                if let Some(a) = alias_name {
                    kms_envelope::admin::check_alias_name(a).map_err(|e| usage(e.to_string()))?;
                }
                let tags = parse_tags(tags)?;
                let out = admin.create_key(Some(&text), description.as_deref(), &tags).await.map_err(kms)?;
                if let Some(alias) = alias_name {
                    let id = out["KeyMetadata"]["KeyId"].as_str().unwrap_or_default().to_owned();
                    admin.create_alias(alias, &id).await.map_err(kms)?;
                }
                print_json(&out)?;
            }
            KeyCommand::CreateAlias { alias_name, target_key_id } => {
                admin.create_alias(alias_name, target_key_id).await.map_err(argument_or_kms)?;
            }
            KeyCommand::ListAliases { key_id } => print_json(&admin.list_aliases(key_id.as_deref()).await.map_err(kms)?)?,
            KeyCommand::Describe { key_id } => print_json(&admin.describe_key(key_id).await.map_err(kms)?)?,
            KeyCommand::Enable { key_id } => admin.enable_key(key_id).await.map_err(kms)?,
            KeyCommand::Disable { key_id } => admin.disable_key(key_id).await.map_err(kms)?,
            KeyCommand::ScheduleDeletion { key_id, pending_window_in_days } => print_json(
                &admin
                    .schedule_key_deletion(key_id, *pending_window_in_days)
                    .await
                    .map_err(argument_or_kms)?,
            )?,
            KeyCommand::CancelDeletion { key_id } => print_json(&admin.cancel_key_deletion(key_id).await.map_err(kms)?)?,
            KeyCommand::Template { .. } | KeyCommand::Lint { .. } => unreachable!("handled above"),
        }
        Ok(())
    })
}
