//! The lease value types: newtypes for names, holders, tokens and times, validated once at
//! the edge so the stores can trust them.

use std::fmt;
use std::time::Duration;

use crate::error::LeaseError;
use crate::limits;

/// What a lease is over: a signer address, a `topic/partition`, any non-empty string.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceName(String);

impl ResourceName {
    /// Validates a resource name: non-empty, at most [`limits::RESOURCE_NAME_BYTES_MAX`] bytes.
    pub fn new(name: impl Into<String>) -> Result<Self, LeaseError> {
        let name = name.into();
        check_name("resource name", &name, limits::RESOURCE_NAME_BYTES_MAX)?;
        Ok(Self(name))
    }

    /// The name as stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ResourceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who holds a lease: one process on one node. Two processes must never share a holder id,
/// or they would renew each other's lease.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HolderId(String);

impl HolderId {
    /// Validates a holder id: non-empty, at most [`limits::HOLDER_ID_BYTES_MAX`] bytes.
    pub fn new(id: impl Into<String>) -> Result<Self, LeaseError> {
        let id = id.into();
        check_name("holder id", &id, limits::HOLDER_ID_BYTES_MAX)?;
        Ok(Self(id))
    }

    /// The id as stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for HolderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn check_name(what: &str, value: &str, bytes_max: usize) -> Result<(), LeaseError> {
    if value.is_empty() {
        return Err(LeaseError::InvalidArgument(format!("{what} is empty")));
    }
    if value.len() > bytes_max {
        return Err(LeaseError::InvalidArgument(format!(
            "{what} is {} bytes, more than {bytes_max}",
            value.len()
        )));
    }
    Ok(())
}

/// A fencing token: strictly increasing per resource across holders, never reused, even
/// after release. Writers carry it; the fence refuses any token but the current one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FencingToken(pub(crate) i64);

impl FencingToken {
    /// Wraps a token read back from the caller's own storage (e.g. a `fencing_token` column).
    pub fn new(token: i64) -> Self {
        Self(token)
    }

    /// The token as stored.
    pub fn get(self) -> i64 {
        self.0
    }
}

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Milliseconds since the Unix epoch, as read from a [`crate::Clock`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UnixMillis(pub i64);

impl UnixMillis {
    /// `self + by`, saturating at the end of time.
    pub fn saturating_add(self, by: Duration) -> Self {
        let by_ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        Self(self.0.saturating_add(by_ms))
    }

    /// `self - by`, saturating at the start of time.
    pub fn saturating_sub(self, by: Duration) -> Self {
        let by_ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        Self(self.0.saturating_sub(by_ms))
    }

    /// How long from `self` until `later`; zero when `later` is not later.
    pub fn until(self, later: UnixMillis) -> Duration {
        let ms = later.0.saturating_sub(self.0).max(0);
        Duration::from_millis(u64::try_from(ms).unwrap_or(0))
    }
}

/// A granted lease. Valid for writes while its token is the resource's current token; live
/// (exclusive against other holders' `try_acquire`) while `now < expires_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// What is leased.
    pub resource: ResourceName,
    /// Who holds it.
    pub holder: HolderId,
    /// The fencing token of this tenure; renewals keep it.
    pub token: FencingToken,
    /// When the lease lapses unless renewed, by the store's clock.
    pub expires_at: UnixMillis,
}

impl Lease {
    /// True while no other holder may take the lease over.
    pub fn is_live_at(&self, now: UnixMillis) -> bool {
        now < self.expires_at
    }
}

/// Validates a TTL against [`limits::TTL_MIN`]..=[`limits::TTL_MAX`].
pub(crate) fn check_ttl(ttl: Duration) -> Result<(), LeaseError> {
    if ttl < limits::TTL_MIN || ttl > limits::TTL_MAX {
        return Err(LeaseError::InvalidArgument(format!(
            "ttl {ttl:?} is outside {:?}..={:?}",
            limits::TTL_MIN,
            limits::TTL_MAX
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(ResourceName::new("").is_err());
        assert!(ResourceName::new("x".repeat(limits::RESOURCE_NAME_BYTES_MAX + 1)).is_err());
        assert!(ResourceName::new("x".repeat(limits::RESOURCE_NAME_BYTES_MAX)).is_ok());
        assert!(HolderId::new("").is_err());
        assert!(HolderId::new("node-1").is_ok());
    }

    #[test]
    fn ttl_limits() {
        assert!(check_ttl(Duration::ZERO).is_err());
        assert!(check_ttl(limits::TTL_MIN).is_ok());
        assert!(check_ttl(limits::TTL_MAX).is_ok());
        assert!(check_ttl(limits::TTL_MAX + Duration::from_millis(1)).is_err());
    }

    #[test]
    fn time_arithmetic_saturates() {
        assert_eq!(
            UnixMillis(i64::MAX - 1).saturating_add(Duration::from_secs(1)),
            UnixMillis(i64::MAX)
        );
        assert_eq!(UnixMillis(5).until(UnixMillis(3)), Duration::ZERO);
        assert_eq!(UnixMillis(3).until(UnixMillis(5)), Duration::from_millis(2));
    }
}
