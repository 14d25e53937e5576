//! Web framework integrations, each behind its cargo feature: a tower layer (axum, tonic,
//! hyper), axum extractors, and actix-web middleware. All share the outcome rule below.

#[cfg(feature = "actix")]
pub mod actix;
#[cfg(feature = "axum")]
pub mod axum;
#[cfg(feature = "tower")]
pub mod tower;

/// An error and its sources, for a log line: `Display` of dbscope's errors leaves the driver's
/// cause to `source()`.
#[cfg_attr(not(any(feature = "tower", feature = "actix")), allow(dead_code))]
pub(crate) struct Chain<'a>(&'a dyn std::error::Error);

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

/// Decides a request's outcome from its response status: below 400 commits, 400 and up rolls
/// back, with exceptions either way.
#[derive(Clone, Debug, Default)]
#[cfg_attr(not(any(feature = "tower", feature = "actix")), allow(dead_code))]
pub(crate) struct StatusPolicy {
    commit_on: Vec<u16>,
    rollback_on: Vec<u16>,
}

#[cfg_attr(not(any(feature = "tower", feature = "actix")), allow(dead_code))]
impl StatusPolicy {
    pub(crate) fn commit_on(&mut self, status: u16) {
        self.rollback_on.retain(|s| *s != status);
        self.commit_on.push(status);
    }

    pub(crate) fn rollback_on(&mut self, status: u16) {
        self.commit_on.retain(|s| *s != status);
        self.rollback_on.push(status);
    }

    /// Applies a nested (per-route) policy's exceptions over this one's: the route's word wins.
    pub(crate) fn merge(&mut self, route: &StatusPolicy) {
        for status in &route.commit_on {
            self.commit_on(*status);
        }
        for status in &route.rollback_on {
            self.rollback_on(*status);
        }
    }

    pub(crate) fn commits(&self, status: u16) -> bool {
        if self.rollback_on.contains(&status) {
            return false;
        }
        status < 400 || self.commit_on.contains(&status)
    }
}

#[cfg(test)]
mod tests {
    use super::StatusPolicy;

    #[test]
    fn below_400_commits_unless_listed() {
        let mut policy = StatusPolicy::default();
        assert!(policy.commits(200) && policy.commits(302));
        assert!(!policy.commits(400) && !policy.commits(500));
        policy.commit_on(409);
        policy.rollback_on(202);
        assert!(policy.commits(409) && !policy.commits(202) && policy.commits(201));
        policy.rollback_on(409); // the last word wins
        assert!(!policy.commits(409));
        let mut route = StatusPolicy::default();
        route.commit_on(202);
        policy.merge(&route);
        assert!(policy.commits(202) && !policy.commits(409));
    }
}
