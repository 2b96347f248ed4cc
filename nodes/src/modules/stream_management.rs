//! XEP-0198: Stream Management, the module's declaration: the stream feature, the nonza
//! namespace, the specification and `[modules.stream_management]`. The protocol lives where
//! the stream is: the inbound count in `proto::negotiation`, the outbound queue, detaching
//! and resumption in `c2s::stream_management`, which reads these settings from the registry
//! ([`Registry::get`](super::Registry::get)).

use super::{ConfigOption, Module, Section, Support};
use proto::element::Element;
use proto::ns;

pub fn module() -> Box<dyn Module> {
    Box::new(StreamManagement {
        settings: Settings::default(),
    })
}

/// How sessions are kept for resumption.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Whether `<enable resume='true'/>` gets a resumable session.
    pub resume: bool,
    /// Seconds a detached session waits when the client states no `max`.
    pub resume_timeout_secs: u32,
    /// The most a client may ask for.
    pub max_resume_timeout_secs: u32,
    /// Bytes of unacknowledged stanzas a session keeps; beyond, it ends (a detached session)
    /// or its stream is closed (an attached one) and they are handled as when it expires.
    pub max_unacked_bytes: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            resume: true,
            resume_timeout_secs: 300,
            max_resume_timeout_secs: 900,
            max_unacked_bytes: 256 * 1024,
        }
    }
}

struct StreamManagement {
    settings: Settings,
}

impl StreamManagement {
    pub fn settings(&self) -> Settings {
        self.settings
    }
}

impl Module for StreamManagement {
    fn name(&self) -> &'static str {
        "stream_management"
    }
    fn specs(&self) -> &'static [Support] {
        &[Support {
            spec: "XEP-0198",
            title: "Stream Management: acknowledgements and resumption on any cluster node",
        }]
    }
    fn options(&self) -> &'static [ConfigOption] {
        &[
            ConfigOption {
                key: "resume",
                default: "true",
                doc: "offer resumable sessions (XEP-0198 §5)",
            },
            ConfigOption {
                key: "resume_timeout_secs",
                default: "300",
                doc: "how long a detached session waits when the client asks no `max`",
            },
            ConfigOption {
                key: "max_resume_timeout_secs",
                default: "900",
                doc: "the longest a client may ask a detached session to wait",
            },
            ConfigOption {
                key: "max_unacked_bytes",
                default: "262144",
                doc: "bytes of unacknowledged stanzas kept per session; beyond, the session ends",
            },
        ]
    }
    fn configure(&mut self, section: &Section) -> Result<(), String> {
        let settings = Settings {
            resume: section.get("resume")?,
            resume_timeout_secs: section.get("resume_timeout_secs")?,
            max_resume_timeout_secs: section.get("max_resume_timeout_secs")?,
            max_unacked_bytes: section.get("max_unacked_bytes")?,
        };
        if settings.resume_timeout_secs > settings.max_resume_timeout_secs {
            return Err(format!(
                "resume_timeout_secs ({}) is above max_resume_timeout_secs ({})",
                settings.resume_timeout_secs, settings.max_resume_timeout_secs
            ));
        }
        if settings.max_unacked_bytes == 0 {
            return Err("max_unacked_bytes must be above 0".into());
        }
        self.settings = settings;
        Ok(())
    }
    fn stream_features(&self) -> Vec<Element> {
        // §2: offered once the client authenticated.
        vec![proto::sm::feature()]
    }
    fn nonza_namespaces(&self) -> &'static [&'static str] {
        &[ns::SM]
    }
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }
}

/// The configured settings, `None` when the module is disabled.
pub fn settings(registry: &super::Registry) -> Option<Settings> {
    registry
        .get::<StreamManagement>()
        .map(StreamManagement::settings)
}
