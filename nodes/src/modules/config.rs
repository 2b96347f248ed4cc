//! `[modules.<name>]`: each module's configuration section. A module declares its options
//! ([`ConfigOption`]: key, default, one-line doc); the operator's values are laid over the
//! defaults, a key the module did not declare is refused, and the module reads typed values
//! from the resulting [`Section`]. Every module also has `enabled`. The declarations are
//! the single source of README's module reference ([`reference_markdown`]). The operator's
//! tables arrive raw (`config::ModulesConfig`): the configuration layer knows no module.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::config::ModulesConfig;

/// One option of a module's section.
#[derive(Debug, Clone, Copy)]
pub struct ConfigOption {
    pub key: &'static str,
    /// The default as a literal that reads the same in TOML and JSON (`true`, `100`,
    /// `"text"`, `[]`).
    pub default: &'static str,
    pub doc: &'static str,
}

/// A section for a module that does not exist is a typo the operator should hear of.
pub(super) fn check_sections<'a>(
    config: &ModulesConfig,
    known: impl Iterator<Item = &'a str>,
) -> Result<(), String> {
    let known: Vec<&str> = known.collect();
    match config.names().find(|k| !known.contains(k)) {
        Some(unknown) => Err(format!(
            "modules.{unknown}: no such module (known: {})",
            known.join(", ")
        )),
        None => Ok(()),
    }
}

/// `name`'s section: the declared defaults with the operator's values over them.
pub(super) fn section(
    config: &ModulesConfig,
    name: &'static str,
    enabled_by_default: bool,
    options: &[ConfigOption],
) -> Result<Section, String> {
    let mut values = Map::new();
    values.insert("enabled".into(), Value::Bool(enabled_by_default));
    for o in options {
        let v = serde_json::from_str(o.default)
            .map_err(|e| format!("modules.{name}.{}: bad declared default: {e}", o.key))?;
        values.insert(o.key.into(), v);
    }
    if let Some(given) = config.section(name) {
        for (k, v) in given {
            if !values.contains_key(k) {
                let mut keys: Vec<&str> = vec!["enabled"];
                keys.extend(options.iter().map(|o| o.key));
                return Err(format!(
                    "modules.{name}.{k}: no such option (options: {})",
                    keys.join(", ")
                ));
            }
            values.insert(k.clone(), v.clone());
        }
    }
    let section = Section { name, values };
    section.get::<bool>("enabled")?;
    Ok(section)
}

/// One module's options, defaults filled in.
pub struct Section {
    name: &'static str,
    values: Map<String, Value>,
}

impl Section {
    pub fn enabled(&self) -> bool {
        self.get("enabled").unwrap_or(true)
    }

    /// The option `key` as a `T`; an error names the key and what was wrong. Environment
    /// variables arrive as text, so a number or boolean written as text is accepted.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<T, String> {
        let v = self.values.get(key).cloned().unwrap_or(Value::Null);
        let name = self.name;
        match serde_json::from_value::<T>(v.clone()) {
            Ok(t) => Ok(t),
            Err(e) => match &v {
                Value::String(s) => {
                    serde_json::from_str::<T>(s).map_err(|_| format!("modules.{name}.{key}: {e}"))
                }
                _ => Err(format!("modules.{name}.{key}: {e}")),
            },
        }
    }
}

/// README's module reference: one table per module, generated from the declarations.
pub fn reference_markdown() -> String {
    let mut out = String::new();
    for m in super::Registry::declared() {
        let specs: Vec<&str> = m.specs().iter().map(|s| s.spec).collect();
        out.push_str(&format!("#### `[modules.{}]`", m.name()));
        if !specs.is_empty() {
            out.push_str(&format!(" — {}", specs.join(", ")));
        }
        out.push_str("\n\n| key | default | meaning |\n|---|---|---|\n");
        let enabled_doc = if m.can_disable() {
            "run the module"
        } else {
            "always on (its state is served by the account shards)"
        };
        out.push_str(&format!(
            "| `enabled` | `{}` | {enabled_doc} |\n",
            m.enabled_by_default()
        ));
        for o in m.options() {
            out.push_str(&format!("| `{}` | `{}` | {} |\n", o.key, o.default, o.doc));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::Registry;
    use super::*;

    #[test]
    fn unknown_module_and_option_are_refused() {
        let typo = ModulesConfig::default().with("carbon", "enabled", Value::Bool(false));
        let err = Registry::configure(&typo).err().unwrap_or_default();
        assert!(err.contains("modules.carbon: no such module"), "{err}");
        let typo = ModulesConfig::default().with("csi", "max_hold", Value::from(3));
        let err = Registry::configure(&typo).err().unwrap_or_default();
        assert!(
            err.contains("modules.csi.max_hold: no such option"),
            "{err}"
        );
        let wrong = ModulesConfig::default().with("csi", "enabled", Value::from("maybe"));
        let err = Registry::configure(&wrong).err().unwrap_or_default();
        assert!(err.contains("modules.csi.enabled"), "{err}");
    }

    #[test]
    fn a_module_can_be_disabled() {
        let off = ModulesConfig::default().with("time", "enabled", Value::Bool(false));
        let r = Registry::configure(&off).expect("valid");
        assert!(!r.modules().any(|m| m.name() == "time"));
        // Environment variables give text.
        let off = ModulesConfig::default().with("time", "enabled", Value::from("false"));
        let r = Registry::configure(&off).expect("valid");
        assert!(!r.modules().any(|m| m.name() == "time"));
    }

    /// README's reference is the generated one: regenerate it with
    /// `switchboard modules --markdown` when a module's options change.
    #[test]
    fn readme_reference_is_current() {
        let readme = include_str!("../../../README.md");
        let begin = "<!-- modules:begin (generated by `switchboard modules --markdown`) -->\n";
        let end = "<!-- modules:end -->";
        let Some(start) = readme.find(begin) else {
            panic!("README.md lacks the modules reference markers");
        };
        let body = &readme[start + begin.len()..];
        let Some(stop) = body.find(end) else {
            panic!("README.md lacks {end}");
        };
        assert_eq!(
            &body[..stop],
            reference_markdown(),
            "README.md's module reference is stale: run `switchboard modules --markdown`"
        );
    }
}
