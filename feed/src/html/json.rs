//! JSON as highlighted HTML: pretty-printed exactly like `serde_json::to_string_pretty`,
//! with keys, strings, numbers and literals wrapped in `<span class="j-...">`.
//!
//! Event data comes from other people's commands, so every piece of text is
//! HTML-escaped here (the caller splices the result in unescaped): the markup this
//! module emits is only its own `<span>` tags.
//!
//! Why strings and not maud: the output must be byte-for-byte the layout of
//! `to_string_pretty` (newlines and indentation are significant inside `<pre>`), and a
//! template would add nothing but a recursive call per value; the escaping that maud
//! would otherwise guarantee is done by [`escape`] on every piece of text and is
//! covered by the tests below and by the hostile-data tests of the pages.

use serde_json::Value;

/// `value` pretty-printed (2-space indent) as escaped, highlighted HTML.
pub(crate) fn highlight(value: &Value) -> String {
    let mut out = String::with_capacity(256);
    write_value(&mut out, value, 0);
    out
}

fn write_value(out: &mut String, value: &Value, depth: usize) {
    match value {
        Value::Null => span(out, "j-lit", "null"),
        Value::Bool(b) => span(out, "j-lit", if *b { "true" } else { "false" }),
        Value::Number(n) => span(out, "j-num", &n.to_string()),
        Value::String(s) => span(out, "j-str", &quoted(s)),
        Value::Array(items) if items.is_empty() => out.push_str("[]"),
        Value::Object(map) if map.is_empty() => out.push_str("{}"),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                separator(out, i, depth + 1);
                write_value(out, item, depth + 1);
            }
            newline(out, depth);
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (key, item)) in map.iter().enumerate() {
                separator(out, i, depth + 1);
                span(out, "j-key", &quoted(key));
                out.push_str(": ");
                write_value(out, item, depth + 1);
            }
            newline(out, depth);
            out.push('}');
        }
    }
}

fn separator(out: &mut String, index: usize, depth: usize) {
    if index > 0 {
        out.push(',');
    }
    newline(out, depth);
}

fn newline(out: &mut String, depth: usize) {
    out.push('\n');
    for _ in 0..depth {
        out.push_str("  ");
    }
}

/// A JSON string literal, as serde_json writes it.
fn quoted(s: &str) -> String {
    serde_json::to_string(s).expect("serialising a str cannot fail")
}

fn span(out: &mut String, class: &str, text: &str) {
    out.push_str("<span class=\"");
    out.push_str(class);
    out.push_str("\">");
    escape(out, text);
    out.push_str("</span>");
}

/// Escapes text for HTML element content and quoted attribute values.
pub(crate) fn escape(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Removes our spans and undoes the escaping: what a reader sees.
    fn visible(html: &str) -> String {
        let mut text = String::new();
        let mut rest = html;
        while let Some(i) = rest.find('<') {
            text.push_str(&rest[..i]);
            let end = rest[i..].find('>').expect("tags are closed") + i;
            rest = &rest[end + 1..];
        }
        text.push_str(rest);
        text.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&#39;", "'")
            .replace("&amp;", "&")
    }

    #[test]
    fn hostile_strings_and_keys_are_escaped() {
        let v = serde_json::json!({
            "<script>alert(1)</script>": "</pre><script>alert('x')</script>",
            "n": 1.5, "ok": true, "none": null, "list": [1, "a&b"], "empty": {}
        });
        let html = highlight(&v);
        assert!(!html.contains("<script"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("<span class=\"j-num\">1.5</span>"));
        assert!(html.contains("<span class=\"j-lit\">true</span>"));
        assert!(html.contains("<span class=\"j-key\">&quot;ok&quot;</span>: "));
        assert_eq!(
            visible(&html),
            serde_json::to_string_pretty(&v).expect("json")
        );
    }

    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            "\\PC{0,12}".prop_map(Value::String),
            "[<>&\"' a-z]{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::btree_map("[<>&\"'a-z]{0,6}", inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn the_visible_text_is_exactly_the_pretty_json(v in json()) {
            let html = highlight(&v);
            prop_assert_eq!(visible(&html), serde_json::to_string_pretty(&v).expect("json"));
            // Only our own tags: every '<' opens or closes a span.
            for (i, _) in html.match_indices('<') {
                let tail = &html[i..];
                prop_assert!(tail.starts_with("<span class=\"j-") || tail.starts_with("</span>"));
            }
        }
    }
}
