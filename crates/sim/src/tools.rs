//! Deterministic tool calls and JSON answers, so clients' tool and structured-output paths can
//! be tested end to end.
//!
//! - Tool calls: with `tools` in the request and `tool_choice` not `"none"`, the simulator
//!   calls every tool whose function name appears in the last user message (only the first
//!   with `parallel_tool_calls: false`); `"required"` calls the first tool and a named
//!   `tool_choice` that tool, whatever the prompt says. Arguments are a JSON object sampled
//!   from the function's `parameters` schema.
//! - `response_format` `json_object` answers `{"answer": "<the usual words>"}`; `json_schema`
//!   answers an object sampled from the schema, strings filled with the usual words.

use serde_json::{Map, Value, json};

/// One call the assistant makes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolCall {
    pub name: String,
    /// The arguments as a JSON text, as OpenAI sends them.
    pub arguments: String,
}

/// The tools called for `prompt` (empty: answer with text).
pub fn calls(
    tools: &[Value],
    tool_choice: Option<&Value>,
    parallel: bool,
    prompt: &str,
) -> Vec<ToolCall> {
    let functions: Vec<&Value> = tools
        .iter()
        .filter_map(|t| t.get("function"))
        .filter(|f| f.get("name").and_then(Value::as_str).is_some())
        .collect();
    let name = |f: &Value| {
        f.get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let call = |f: &Value| ToolCall {
        name: name(f),
        arguments: sample(f.get("parameters").unwrap_or(&Value::Null), "sim").to_string(),
    };
    let chosen: Vec<&Value> = match tool_choice {
        Some(Value::String(s)) if s == "none" => Vec::new(),
        Some(Value::String(s)) if s == "required" => {
            functions.first().copied().into_iter().collect()
        }
        Some(Value::Object(o)) => {
            let wanted = o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str);
            functions
                .iter()
                .copied()
                .filter(|f| f.get("name").and_then(Value::as_str) == wanted)
                .take(1)
                .collect()
        }
        _ => functions
            .iter()
            .copied()
            .filter(|f| prompt.contains(name(f).as_str()))
            .collect(),
    };
    let limit = if parallel { usize::MAX } else { 1 };
    chosen.into_iter().take(limit).map(call).collect()
}

/// The content for a JSON `response_format`, or `None` for text.
pub fn json_content(format: Option<&Value>, words: &str) -> Option<String> {
    let format = format?;
    match format.get("type").and_then(Value::as_str)? {
        "json_object" => Some(json!({ "answer": words }).to_string()),
        "json_schema" => {
            let schema = format
                .get("json_schema")
                .and_then(|s| s.get("schema"))
                .unwrap_or(&Value::Null);
            Some(sample(schema, words).to_string())
        }
        _ => None,
    }
}

/// A value satisfying the simple JSON schemas clients send (objects, arrays, scalars, enums).
fn sample(schema: &Value, text: &str) -> Value {
    sample_at(schema, text, 0)
}

fn sample_at(schema: &Value, text: &str, depth: usize) -> Value {
    if depth > 16 {
        return Value::Null;
    }
    if let Some(first) = schema
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|e| e.first())
    {
        return first.clone();
    }
    if let Some(c) = schema.get("const") {
        return c.clone();
    }
    let kind = match schema.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(Value::Array(ts)) => ts.iter().find_map(Value::as_str).unwrap_or("object"),
        _ if schema.get("properties").is_some() => "object",
        _ => "object",
    };
    match kind {
        "string" => Value::String(text.to_owned()),
        "integer" => json!(1),
        "number" => json!(1.5),
        "boolean" => json!(true),
        "null" => Value::Null,
        "array" => {
            let item = schema.get("items").unwrap_or(&Value::Null);
            json!([sample_at(item, text, depth + 1)])
        }
        _ => {
            let mut out = Map::new();
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (k, v) in props {
                    out.insert(k.clone(), sample_at(v, text, depth + 1));
                }
            }
            Value::Object(out)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn weather() -> Vec<Value> {
        vec![
            json!({"type": "function", "function": {"name": "get_weather", "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}, "days": {"type": "integer"}},
                "required": ["city"]}}}),
            json!({"type": "function", "function": {"name": "get_time"}}),
        ]
    }

    #[test]
    fn tools_named_in_the_prompt_are_called() {
        let c = calls(&weather(), None, true, "use get_weather for Paris");
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].name, "get_weather");
        let args: Value = serde_json::from_str(&c[0].arguments).unwrap();
        assert_eq!(args, json!({"city": "sim", "unit": "c", "days": 1}));
        assert!(calls(&weather(), None, true, "hello").is_empty());
        assert_eq!(
            calls(&weather(), None, true, "get_weather and get_time").len(),
            2
        );
        assert_eq!(
            calls(&weather(), None, false, "get_weather and get_time").len(),
            1
        );
        let none = json!("none");
        assert!(calls(&weather(), Some(&none), true, "get_weather").is_empty());
        let required = json!("required");
        assert_eq!(
            calls(&weather(), Some(&required), true, "hi")[0].name,
            "get_weather"
        );
        let named = json!({"type": "function", "function": {"name": "get_time"}});
        let c = calls(&weather(), Some(&named), true, "hi");
        assert_eq!(
            (c[0].name.as_str(), c[0].arguments.as_str()),
            ("get_time", "{}")
        );
    }

    #[test]
    fn json_formats_are_valid_json() {
        assert_eq!(json_content(None, "a b"), None);
        assert_eq!(json_content(Some(&json!({"type": "text"})), "a b"), None);
        let obj = json_content(Some(&json!({"type": "json_object"})), "a b").unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&obj).unwrap(),
            json!({"answer": "a b"})
        );
        let schema = json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {
            "type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string"}}, "ok": {"type": "boolean"}}}}});
        let v: Value = serde_json::from_str(&json_content(Some(&schema), "w").unwrap()).unwrap();
        assert_eq!(v, json!({"tags": ["w"], "ok": true}));
    }
}
