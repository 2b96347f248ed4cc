//! XEP-0157: Contact Addresses for XMPP Services. The operator's addresses (`mailto:`,
//! `xmpp:`, `https:` URIs) go into the server's disco#info as a `jabber:x:data` form of
//! FORM_TYPE `http://jabber.org/network/serverinfo` (XEP-0128); with none configured the form
//! is left out.

use super::{ConfigOption, Module, Section, Support};
use proto::element::Element;
use proto::ns;

pub fn module() -> Box<dyn Module> {
    Box::new(ContactAddresses::default())
}

/// The form's fields (XEP-0157 §5, registered with the XMPP Registrar) and their options.
const FIELDS: &[(&str, &str)] = &[
    ("abuse", "abuse-addresses"),
    ("admin", "admin-addresses"),
    ("feedback", "feedback-addresses"),
    ("sales", "sales-addresses"),
    ("security", "security-addresses"),
    ("status", "status-addresses"),
    ("support", "support-addresses"),
];

const FORM_TYPE: &str = "http://jabber.org/network/serverinfo";

#[derive(Default)]
struct ContactAddresses {
    /// (field var, addresses) for each option with at least one address.
    fields: Vec<(&'static str, Vec<String>)>,
}

impl Module for ContactAddresses {
    fn name(&self) -> &'static str {
        "contact_addresses"
    }
    fn specs(&self) -> &'static [Support] {
        &[Support {
            spec: "XEP-0157",
            title: "Contact Addresses for XMPP Services",
        }]
    }
    fn options(&self) -> &'static [ConfigOption] {
        &[
            ConfigOption {
                key: "abuse",
                default: "[]",
                doc: "where to report abuse (URIs: `mailto:`, `xmpp:`, `https:`)",
            },
            ConfigOption {
                key: "admin",
                default: "[]",
                doc: "the service's administrators",
            },
            ConfigOption {
                key: "feedback",
                default: "[]",
                doc: "feedback from users",
            },
            ConfigOption {
                key: "sales",
                default: "[]",
                doc: "sales enquiries",
            },
            ConfigOption {
                key: "security",
                default: "[]",
                doc: "security reports",
            },
            ConfigOption {
                key: "status",
                default: "[]",
                doc: "where the service's status is published",
            },
            ConfigOption {
                key: "support",
                default: "[]",
                doc: "user support",
            },
        ]
    }
    fn configure(&mut self, section: &Section) -> Result<(), String> {
        for (key, var) in FIELDS {
            let addresses: Vec<String> = section.get(key)?;
            if let Some(bad) = addresses.iter().find(|a| !a.contains(':')) {
                return Err(format!(
                    "{key}: {bad:?} is not a URI (mailto:..., xmpp:..., https://...)"
                ));
            }
            if !addresses.is_empty() {
                self.fields.push((var, addresses));
            }
        }
        Ok(())
    }
    fn disco_extensions(&self) -> Vec<Element> {
        if self.fields.is_empty() {
            return Vec::new();
        }
        let mut form = Element::new("x", ns::DATA_FORMS)
            .with_attr("type", "result")
            .with_child(
                Element::new("field", ns::DATA_FORMS)
                    .with_attr("var", "FORM_TYPE")
                    .with_attr("type", "hidden")
                    .with_child(Element::new("value", ns::DATA_FORMS).with_text(FORM_TYPE)),
            );
        for (var, addresses) in &self.fields {
            let mut field = Element::new("field", ns::DATA_FORMS)
                .with_attr("var", *var)
                .with_attr("type", "list-multi");
            for a in addresses {
                field = field.with_child(Element::new("value", ns::DATA_FORMS).with_text(a));
            }
            form = form.with_child(field);
        }
        vec![form]
    }
}

#[cfg(test)]
mod tests {
    use super::super::{ModulesConfig, Registry};

    #[test]
    fn the_form_lists_configured_addresses_only() {
        let none = Registry::configure(&ModulesConfig::default()).expect("defaults");
        assert!(none.disco_extensions().is_empty());
        let some = ModulesConfig::default().with(
            "contact_addresses",
            "abuse",
            serde_json::json!(["mailto:abuse@example.org", "xmpp:abuse@example.org"]),
        );
        let r = Registry::configure(&some).expect("valid");
        let forms = r.disco_extensions();
        assert_eq!(forms.len(), 1);
        let xml = forms[0].to_xml_string();
        assert!(
            xml.contains("http://jabber.org/network/serverinfo"),
            "{xml}"
        );
        assert!(xml.contains("abuse-addresses"), "{xml}");
        assert!(xml.contains("xmpp:abuse@example.org"), "{xml}");
        assert!(!xml.contains("admin-addresses"), "{xml}");
        let bad = ModulesConfig::default().with(
            "contact_addresses",
            "admin",
            serde_json::json!(["root"]),
        );
        assert!(Registry::configure(&bad).is_err());
    }
}
