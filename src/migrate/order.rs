//! The order binds migrate in: name order, each bind after the binds its `migrate_after` names.

use std::collections::BTreeMap;

use crate::{Error, Result};

/// `binds` (name → the binds it migrates after) in migration order: a depth-first topological
/// sort visiting names in order, so that binds with no constraint between them keep name order.
///
/// # Errors
///
/// [`ErrorKind::UnknownBind`](crate::ErrorKind::UnknownBind) for a `migrate_after` naming no
/// bind; [`ErrorKind::MigrationOrder`](crate::ErrorKind::MigrationOrder) for a cycle.
pub(crate) fn order(binds: &BTreeMap<String, Vec<String>>) -> Result<Vec<String>> {
    let mut state: BTreeMap<&str, Mark> = BTreeMap::new();
    let mut out = Vec::with_capacity(binds.len());
    for name in binds.keys() {
        visit(name, binds, &mut state, &mut Vec::new(), &mut out)?;
    }
    Ok(out)
}

#[derive(Clone, Copy, PartialEq)]
enum Mark {
    Visiting,
    Done,
}

fn visit<'a>(
    name: &'a str,
    binds: &'a BTreeMap<String, Vec<String>>,
    state: &mut BTreeMap<&'a str, Mark>,
    path: &mut Vec<&'a str>,
    out: &mut Vec<String>,
) -> Result<()> {
    match state.get(name) {
        Some(Mark::Done) => return Ok(()),
        Some(Mark::Visiting) => {
            let start = path.iter().position(|n| *n == name).unwrap_or(0);
            let mut cycle: Vec<String> = path[start..].iter().map(|n| n.to_string()).collect();
            cycle.push(name.to_owned());
            return Err(Error::migration_order(cycle));
        }
        None => {}
    }
    state.insert(name, Mark::Visiting);
    path.push(name);
    let mut after: Vec<&String> = binds[name].iter().collect();
    after.sort();
    for dep in after {
        if !binds.contains_key(dep.as_str()) {
            return Err(Error::unknown_bind(dep, binds.keys().cloned().collect()));
        }
        let (dep, _) = binds.get_key_value(dep.as_str()).expect("checked above");
        visit(dep, binds, state, path, out)?;
    }
    path.pop();
    state.insert(name, Mark::Done);
    out.push(name.to_owned());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    fn graph(edges: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        edges
            .iter()
            .map(|(n, after)| (n.to_string(), after.iter().map(|a| a.to_string()).collect()))
            .collect()
    }

    #[test]
    fn name_order_unless_told_otherwise() {
        let g = graph(&[("a", &["c"]), ("b", &[]), ("c", &[]), ("d", &["a"])]);
        assert_eq!(order(&g).unwrap(), ["c", "a", "b", "d"]);
    }

    #[test]
    fn a_cycle_is_refused_and_named() {
        let g = graph(&[("a", &["b"]), ("b", &["c"]), ("c", &["a"]), ("d", &[])]);
        let err = order(&g).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::MigrationOrder);
        assert_eq!(err.known_binds(), ["a", "b", "c", "a"]);
        assert!(
            err.to_string()
                .contains("`a` after `b` after `c` after `a`"),
            "{err}"
        );
    }

    #[test]
    fn an_unknown_bind_is_refused() {
        let g = graph(&[("a", &["nope"])]);
        let err = order(&g).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::UnknownBind);
    }
}
