//! KMS ARNs as this crate reads them: parsing, Region checks, multi-Region key matching.

/// A parsed KMS ARN: `arn:PARTITION:kms:REGION:ACCOUNT:key/ID` (or `alias/NAME`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KmsArn {
    /// `aws`, `aws-cn`, `aws-us-gov`, …
    pub partition: String,
    /// The Region.
    pub region: String,
    /// The account ID.
    pub account: String,
    /// `key` or `alias`.
    pub resource_type: String,
    /// The key ID (`mrk-…` for multi-Region keys) or alias name.
    pub resource_id: String,
}

impl KmsArn {
    /// Parses an ARN; `None` for anything that is not a KMS key or alias ARN.
    pub fn parse(arn: &str) -> Option<Self> {
        let mut parts = arn.splitn(6, ':');
        let (prefix, partition, service, region, account, resource) = (
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
        );
        let (resource_type, resource_id) = resource.split_once('/')?;
        let ok = prefix == "arn"
            && service == "kms"
            && !partition.is_empty()
            && !region.is_empty()
            && !account.is_empty()
            && matches!(resource_type, "key" | "alias")
            && !resource_id.is_empty();
        ok.then(|| KmsArn {
            partition: partition.to_owned(),
            region: region.to_owned(),
            account: account.to_owned(),
            resource_type: resource_type.to_owned(),
            resource_id: resource_id.to_owned(),
        })
    }

    /// Whether the Region is well formed: lowercase words joined by `-`, the first of two to
    /// four letters, at least one more word, and a number of one or two digits at the end
    /// (`us-east-1`, `cn-north-1`, `us-gov-west-1`, `us-isob-east-1`, `eusc-de-east-1`), at
    /// most 32 bytes. Every Region of every AWS partition has this shape.
    pub fn region_is_well_formed(&self) -> bool {
        let r = self.region.as_str();
        let words: Vec<&str> = r.split('-').collect();
        let letters = |w: &str, min: usize, max: usize| {
            (min..=max).contains(&w.len()) && w.bytes().all(|b| b.is_ascii_lowercase())
        };
        r.len() <= 32
            && words.len() >= 3
            && letters(words[0], 2, 4)
            && words[1..words.len() - 1].iter().all(|w| letters(w, 1, 16))
            && words.last().is_some_and(|n| {
                (1..=2).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_digit())
            })
    }

    /// Whether this names a multi-Region key.
    pub fn is_mrk(&self) -> bool {
        self.resource_type == "key" && self.resource_id.starts_with("mrk-")
    }

    /// The ESDK's MRK match for decrypt: equal, or both multi-Region keys that differ only in
    /// their Region.
    pub fn mrk_matches(&self, other: &KmsArn) -> bool {
        if self == other {
            return true;
        }
        self.is_mrk()
            && other.is_mrk()
            && self.partition == other.partition
            && self.account == other.account
            && self.resource_id == other.resource_id
    }
}

impl std::fmt::Display for KmsArn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "arn:{}:kms:{}:{}:{}/{}",
            self.partition, self.region, self.account, self.resource_type, self.resource_id
        )
    }
}

/// Why a KMS keyring refuses the key an `aws-kms` wrapped key names ([`Error::BadKmsArn`](crate::Error::BadKmsArn)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KmsArnProblem {
    /// The provider info is not a KMS key ARN (`arn:PARTITION:kms:REGION:ACCOUNT:key/ID`):
    /// not UTF-8, not an ARN, or an alias. The ESDK's AWS KMS keyring specification makes
    /// this fail the decryption rather than skip the wrapped key.
    NotAKeyArn,
    /// The ARN's Region is not a well-formed AWS Region name
    /// (see [`KmsArn::region_is_well_formed`]).
    /// A Region from a message is used to pick a KMS client, so nothing else is accepted.
    MalformedRegion,
}

impl KmsArnProblem {
    pub(crate) fn describe(self) -> &'static str {
        match self {
            KmsArnProblem::NotAKeyArn => {
                "which is not a KMS key ARN (arn:PARTITION:kms:REGION:ACCOUNT:key/ID)"
            }
            KmsArnProblem::MalformedRegion => "whose Region is not a well-formed AWS Region name",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arn_parsing_and_mrk_matching() {
        let a = KmsArn::parse("arn:aws:kms:us-west-2:111122223333:key/mrk-1234").unwrap();
        let b = KmsArn::parse("arn:aws:kms:us-east-1:111122223333:key/mrk-1234").unwrap();
        let c = KmsArn::parse("arn:aws:kms:us-east-1:111122223333:key/1234").unwrap();
        let d = KmsArn::parse("arn:aws:kms:us-west-2:111122223333:key/1234").unwrap();
        assert!(a.is_mrk() && a.mrk_matches(&b) && b.mrk_matches(&a));
        assert!(!c.mrk_matches(&d), "ordinary keys match only themselves");
        assert!(c.mrk_matches(&c));
        assert_eq!(
            a.to_string(),
            "arn:aws:kms:us-west-2:111122223333:key/mrk-1234"
        );
        let alias = KmsArn::parse("arn:aws:kms:us-west-2:111122223333:alias/app").unwrap();
        assert_eq!(alias.resource_type, "alias");
        for bad in [
            "alias/app",
            "arn:aws:s3:us-west-2:1:key/x",
            "arn:aws:kms::1:key/x",
            "1234",
        ] {
            assert!(KmsArn::parse(bad).is_none(), "{bad}");
        }
    }

    fn region(r: &str) -> KmsArn {
        KmsArn::parse(&format!("arn:aws:kms:{r}:111122223333:key/k")).unwrap()
    }

    #[test]
    fn regions_of_every_partition_are_well_formed_and_nothing_else() {
        for good in [
            "us-east-1",
            "eu-west-3",
            "ap-southeast-5",
            "il-central-1",
            "cn-north-1",
            "cn-northwest-1",
            "us-gov-west-1",
            "us-iso-east-1",
            "us-isob-east-1",
            "eu-isoe-west-1",
            "us-isof-south-1",
            "eusc-de-east-1",
        ] {
            assert!(region(good).region_is_well_formed(), "{good}");
        }
        for bad in [
            "US-EAST-1",
            "us-east",
            "us-east-123",
            "us-east-1\u{1b}[2J",
            "us_east_1",
            "us--east-1",
            "us-east-1-",
            "-us-east-1",
            "u-east-1",
            "useast-east-1",
            "us-east-1.evil.example",
            "localhost",
            "us-\u{e9}ast-1",
            "us-eastaaaaaaaaaaaaaaaaaaaaaaaaaaa-1",
        ] {
            assert!(!region(bad).region_is_well_formed(), "{bad:?}");
        }
    }
}
