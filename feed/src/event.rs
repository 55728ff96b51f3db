//! The event as stored, published and read back, and the validated names it carries.

use std::borrow::Cow;

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

/// A 1-based position in a log. Position 0 means "before the first event".
pub type Position = u64;

/// An event as it sits in a log: immutable once appended.
///
/// `J` is how its `data` and `metadata` are held: decoded (`serde_json::Value`, the
/// default) or as the JSON text they were stored or published as ([`RawEvent`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event<J = serde_json::Value> {
    /// Gapless, commit-ordered, from 1.
    pub position: Position,
    /// The producer's idempotency key.
    pub id: Uuid,
    /// The aggregate this event belongs to, e.g. `order-<uuid>`.
    pub stream: StreamId,
    /// 1, 2, ... within the stream.
    pub stream_version: u64,
    /// Past tense: `OrderAccepted`.
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// When it happened (UTC, microsecond precision).
    pub occurred_at: DateTime<Utc>,
    /// The business payload, a JSON object.
    pub data: J,
    /// Correlation / causation ids, schema version and other hints.
    pub metadata: J,
}

/// An event whose `data` and `metadata` are the JSON text they came in, checked to be
/// JSON but not decoded. A mirror that stores events as it reads them takes these
/// (see [`crate::subscriber::Handler::takes_raw`]): it skips building a
/// `serde_json::Value` for every event and writing it back out as text, and it keeps
/// the exact text the producer published.
pub type RawEvent = Event<Box<RawValue>>;

impl<J> Event<J> {
    /// The same event with its `data` and `metadata` converted by `f`, which is given
    /// the field's name (`"data"`, `"metadata"`) with its value.
    pub fn try_map_json<K, E>(
        self,
        mut f: impl FnMut(&'static str, J) -> Result<K, E>,
    ) -> Result<Event<K>, E> {
        Ok(Event {
            position: self.position,
            id: self.id,
            stream: self.stream,
            stream_version: self.stream_version,
            event_type: self.event_type,
            occurred_at: self.occurred_at,
            data: f("data", self.data)?,
            metadata: f("metadata", self.metadata)?,
        })
    }

    /// The event borrowing its `data` and `metadata`.
    fn json_by_ref(&self) -> Event<&J> {
        Event {
            position: self.position,
            id: self.id,
            stream: self.stream.clone(),
            stream_version: self.stream_version,
            event_type: self.event_type.clone(),
            occurred_at: self.occurred_at,
            data: &self.data,
            metadata: &self.metadata,
        }
    }
}

impl RawEvent {
    /// The event with its JSON decoded.
    pub fn decode(&self) -> Result<Event, serde_json::Error> {
        self.json_by_ref()
            .try_map_json(|_, raw| serde_json::from_str(raw.get()))
    }
}

/// How an [`Event`] holds its JSON: what the log and the Atom writer need of it.
pub trait Json {
    /// The value as JSON text: compact for a decoded value, and for text the text as
    /// it is held (borrowed).
    fn json_text(&self) -> Cow<'_, str>;
}

impl Json for serde_json::Value {
    fn json_text(&self) -> Cow<'_, str> {
        Cow::Owned(serde_json::to_string(self).expect("a serde_json::Value always serializes"))
    }
}

impl Json for Box<RawValue> {
    fn json_text(&self) -> Cow<'_, str> {
        Cow::Borrowed(self.get())
    }
}

/// An event a producer wants to append. The log gives it a position and a stream
/// version.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// The idempotency key: appending the same id again is a no-op.
    pub id: Uuid,
    /// The aggregate.
    pub stream: StreamId,
    /// The event type.
    pub event_type: EventType,
    /// When it happened.
    pub occurred_at: DateTime<Utc>,
    /// The payload; must be a JSON object.
    pub data: serde_json::Value,
    /// Metadata; a JSON object (empty when there is none).
    pub metadata: serde_json::Value,
}

impl NewEvent {
    /// A new event with a fresh time-ordered id, occurring now.
    pub fn new(stream: StreamId, event_type: EventType, data: serde_json::Value) -> Self {
        Self {
            id: Uuid::now_v7(),
            stream,
            event_type,
            occurred_at: now_micros(),
            data,
            metadata: serde_json::Value::Object(serde_json::Map::new()),
        }
    }

    /// Replaces the id (for producers that derive ids from their commands).
    pub fn with_id(mut self, id: Uuid) -> Self {
        self.id = id;
        self
    }

    /// Replaces the metadata.
    pub fn with_metadata(mut self, metadata: serde_json::Value) -> Self {
        self.metadata = metadata;
        self
    }
}

/// The id of an event published in reaction to `subject` (an incoming event, an
/// order): the same inputs always give the same id, so replaying the reaction turns
/// a second publication into a no-op. A name-based UUID (RFC 9562 version 8, from
/// SHA-256 of the subject and `kind`).
pub fn derived_id(subject: Uuid, kind: &str) -> Uuid {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    hash.update(subject.as_bytes());
    hash.update(kind.as_bytes());
    let digest = hash.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// The current time truncated to what the log stores (microseconds).
pub fn now_micros() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// A stream id must be 1 to 200 characters from `A-Z a-z 0-9 - _ . ~ :`.
    #[error("invalid stream id {0:?}: use 1 to 200 characters from A-Z a-z 0-9 - _ . ~ :")]
    Stream(String),
    /// An event type starts with a letter and continues with letters, digits, `_` or `.`.
    #[error(
        "invalid event type {0:?}: start with a letter, then letters, digits, _ or . (at most 100)"
    )]
    EventType(String),
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $check:expr, $err:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates `s`.
            pub fn parse(s: impl Into<String>) -> Result<Self, NameError> {
                let s = s.into();
                let check: fn(&str) -> bool = $check;
                if check(&s) { Ok(Self(s)) } else { Err(NameError::$err(s)) }
            }

            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, NameError> {
                Self::parse(s)
            }
        }

        impl std::str::FromStr for $name {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::parse(s)
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

name_type!(
    /// An aggregate's stream id. Its characters are safe in a URL path segment and in
    /// XML, so feeds can use it verbatim.
    StreamId,
    |s| {
        (1..=200).contains(&s.len())
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.~:".contains(&b))
            && s != "."
            && s != ".."
            // The feed server reads a trailing `.atom` / `.html` as a format choice.
            && !s.ends_with(".atom")
            && !s.ends_with(".html")
    },
    Stream
);

name_type!(
    /// An event type such as `OrderAccepted`.
    EventType,
    |s| {
        (1..=100).contains(&s.len())
            && s.as_bytes()[0].is_ascii_alphabetic()
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
    },
    EventType
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_accept_url_safe_names_and_refuse_the_rest() {
        assert!(StreamId::parse("order-3f1c").is_ok());
        assert!(StreamId::parse("a:b.c~d_e").is_ok());
        for bad in [
            "",
            "a/b",
            "a b",
            "..",
            "é",
            &"x".repeat(201),
            "a?b",
            "a%2F",
            "x.atom",
            "y.html",
        ] {
            assert!(StreamId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn event_types_start_with_a_letter() {
        assert!(EventType::parse("OrderAccepted").is_ok());
        assert!(EventType::parse("v2.OrderAccepted").is_ok());
        for bad in ["", "1Order", "Order Accepted", "Order-Accepted", "<x>"] {
            assert!(EventType::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
