//! Checking results.json against docs/results.schema.json.

use serde_json::Value;

/// A validator for the subset of JSON Schema that `docs/results.schema.json` uses: type
/// (with unions), enum, required, properties, additionalProperties: false, items,
/// minItems/maxItems, minimum/maximum, oneOf, and local `$ref`s.
pub fn validate(v: &Value, s: &Value, root: &Value, at: &str) -> Result<(), String> {
    if let Some(r) = s["$ref"].as_str() {
        let name = r.trim_start_matches("#/$defs/");
        return validate(v, &root["$defs"][name], root, at);
    }
    if let Some(options) = s["oneOf"].as_array() {
        let n = options
            .iter()
            .filter(|o| validate(v, o, root, at).is_ok())
            .count();
        return if n == 1 {
            Ok(())
        } else {
            Err(format!("{at}: matches {n} of oneOf"))
        };
    }
    if let Some(t) = s.get("type") {
        let types: Vec<&str> = match t {
            Value::String(x) => vec![x.as_str()],
            Value::Array(a) => a.iter().filter_map(|x| x.as_str()).collect(),
            _ => vec![],
        };
        let ok = types.iter().any(|ty| match *ty {
            "object" => v.is_object(),
            "array" => v.is_array(),
            "string" => v.is_string(),
            "number" => v.is_number(),
            "integer" => v.is_u64() || v.is_i64(),
            "boolean" => v.is_boolean(),
            "null" => v.is_null(),
            _ => false,
        });
        if !ok {
            return Err(format!("{at}: {v} is not {types:?}"));
        }
    }
    if let Some(e) = s["enum"].as_array() {
        if !e.contains(v) {
            return Err(format!("{at}: {v} not in {e:?}"));
        }
    }
    if let Some(x) = v.as_f64() {
        if s["minimum"].as_f64().is_some_and(|m| x < m)
            || s["maximum"].as_f64().is_some_and(|m| x > m)
        {
            return Err(format!("{at}: {x} out of range"));
        }
    }
    if let Some(obj) = v.as_object() {
        for r in s["required"].as_array().into_iter().flatten() {
            let k = r.as_str().unwrap_or("");
            if !obj.contains_key(k) {
                return Err(format!("{at}: missing {k}"));
            }
        }
        let props = s["properties"].as_object();
        for (k, val) in obj {
            match props.and_then(|p| p.get(k)) {
                Some(ps) => validate(val, ps, root, &format!("{at}.{k}"))?,
                None if s["additionalProperties"] == Value::Bool(false) => {
                    return Err(format!("{at}: unexpected {k}"));
                }
                None => {}
            }
        }
    }
    if let Some(arr) = v.as_array() {
        if s["minItems"]
            .as_u64()
            .is_some_and(|m| (arr.len() as u64) < m)
            || s["maxItems"]
                .as_u64()
                .is_some_and(|m| (arr.len() as u64) > m)
        {
            return Err(format!("{at}: {} items", arr.len()));
        }
        if let Some(items) = s.get("items") {
            for (i, x) in arr.iter().enumerate() {
                validate(x, items, root, &format!("{at}[{i}]"))?;
            }
        }
    }
    Ok(())
}

/// `docs/results.schema.json`.
pub fn results_schema() -> Value {
    serde_json::from_str(include_str!("../../docs/results.schema.json")).unwrap()
}
