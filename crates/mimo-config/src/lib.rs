//! Layered TOML configs, the one loader behind `mimo train`, `mimo rl` and `mimo pipeline`: embedded
//! defaults, then each `--config` file in order, then `--set key.path=value` overrides. Tables merge key by
//! key (later layers win); every layer is checked against the config type on its own, so an unknown key or a
//! bad value is an error that names the file or the override that brought it.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// A config that cannot be loaded; the message names the file or override at fault.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Merges `over` into `base`, recursing into tables (later layers win key by key).
pub fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// A `--set` value: TOML when it parses as one (`3`, `true`, `[1, 2]`, `"s"`), else the raw string.
pub fn parse_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

/// The table one `--set key.path=value` override stands for.
pub fn set_table(s: &str) -> Result<toml::Table, ConfigError> {
    let bad = |why: &str| ConfigError(format!("--set {s:?}: {why}"));
    let (key, raw) = s.split_once('=').ok_or_else(|| bad("expected key=value"))?;
    let parts: Vec<&str> = key.trim().split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(bad("bad key"));
    }
    let mut value = parse_value(raw.trim());
    for p in parts.iter().rev() {
        let mut t = toml::Table::new();
        t.insert(p.to_string(), value);
        value = toml::Value::Table(t);
    }
    match value {
        toml::Value::Table(t) => Ok(t),
        _ => Err(bad("bad key")),
    }
}

/// Reads one TOML file as a table.
pub fn read_table(path: &Path) -> Result<toml::Table, ConfigError> {
    let s = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
    toml::from_str(&s).map_err(|e| ConfigError(format!("{}: {e}", path.display())))
}

/// `defaults` (TOML text), then `files`, then `sets`, as one table; each layer is checked as a `T`.
pub fn layered_table<T: DeserializeOwned>(
    defaults: &str,
    files: &[PathBuf],
    sets: &[String],
) -> Result<toml::Table, ConfigError> {
    let mut table: toml::Table =
        toml::from_str(defaults).map_err(|e| ConfigError(format!("embedded defaults: {e}")))?;
    let check = |t: &toml::Table, at: &dyn Fn() -> String| {
        t.clone()
            .try_into::<T>()
            .map(drop)
            .map_err(|e| ConfigError(format!("{}: {e}", at())))
    };
    for f in files {
        merge(&mut table, read_table(f)?);
        check(&table, &|| f.display().to_string())?;
    }
    for s in sets {
        merge(&mut table, set_table(s)?);
        check(&table, &|| format!("--set {s:?}"))?;
    }
    Ok(table)
}

/// [`layered_table`] deserialized.
pub fn layered<T: DeserializeOwned>(
    defaults: &str,
    files: &[PathBuf],
    sets: &[String],
) -> Result<T, ConfigError> {
    layered_table::<T>(defaults, files, sets)?
        .try_into()
        .map_err(|e| ConfigError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Cfg {
        a: i64,
        sub: Sub,
    }

    #[derive(Debug, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Sub {
        x: f64,
        name: String,
    }

    #[test]
    fn layers_merge_in_order_and_errors_name_their_layer() {
        let dir = std::env::temp_dir().join(format!("mimo-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("over.toml");
        std::fs::write(&f, "[sub]\nx = 2.5\n").unwrap();
        let defaults = "a = 1\n[sub]\nx = 1.0\nname = \"d\"\n";
        let c: Cfg = layered(
            defaults,
            std::slice::from_ref(&f),
            &["sub.name=run 1".into(), "a=7".into()],
        )
        .unwrap();
        assert_eq!(
            c,
            Cfg {
                a: 7,
                sub: Sub {
                    x: 2.5,
                    name: "run 1".into()
                }
            }
        );
        let e = layered::<Cfg>(defaults, &[], &["sub.typo=1".into()])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--set \"sub.typo=1\"") && e.contains("typo"),
            "{e}"
        );
        std::fs::write(&f, "b = 1\n").unwrap();
        let e = layered::<Cfg>(defaults, std::slice::from_ref(&f), &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("over.toml") && e.contains("unknown field"),
            "{e}"
        );
        let e = layered::<Cfg>(defaults, &[], &["novalue".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("key=value"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
