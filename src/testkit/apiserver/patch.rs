//! The patch formats the fake API server applies: JSON merge patch (RFC 7386, also used for strategic
//! merge and apply, which is close enough for this crate's types) and JSON patch (RFC 6902).

use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchKind {
    Merge,
    /// Applied as a merge patch: the same for the objects and fields this crate writes.
    StrategicMerge,
    Json,
    /// Server-side apply, approximated as a merge patch that may create.
    Apply,
}

impl PatchKind {
    pub fn from_content_type(content_type: &str) -> Option<Self> {
        match content_type.split(';').next().unwrap_or_default().trim() {
            "application/merge-patch+json" => Some(Self::Merge),
            "application/strategic-merge-patch+json" => Some(Self::StrategicMerge),
            "application/json-patch+json" => Some(Self::Json),
            "application/apply-patch+yaml" => Some(Self::Apply),
            _ => None,
        }
    }
}

/// RFC 7386: objects merge key by key, `null` deletes, anything else replaces.
pub fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    let object = target.as_object_mut().expect("made an object above");
    for (key, value) in patch {
        if value.is_null() {
            object.remove(key);
        } else {
            merge(object.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// RFC 6902 `add`, `remove`, `replace` and `test`; any failing operation leaves `target` untouched.
pub fn json_patch(target: &mut Value, operations: &Value) -> Result<(), String> {
    let operations = operations.as_array().ok_or("a JSON patch is an array of operations")?;
    let mut patched = target.clone();
    for op in operations {
        let path = op["path"].as_str().ok_or("an operation needs a path")?;
        match op["op"].as_str() {
            Some("add") => add(&mut patched, path, op["value"].clone())?,
            Some("remove") => {
                remove(&mut patched, path)?;
            }
            Some("replace") => {
                remove(&mut patched, path)?;
                add(&mut patched, path, op["value"].clone())?;
            }
            Some("test") => {
                if patched.pointer(path) != Some(&op["value"]) {
                    return Err(format!("test of {path} failed"));
                }
            }
            other => return Err(format!("unsupported JSON patch op {other:?}")),
        }
    }
    *target = patched;
    Ok(())
}

fn split(path: &str) -> Result<(String, String), String> {
    let (parent, last) = path.rsplit_once('/').ok_or_else(|| format!("bad JSON pointer {path:?}"))?;
    Ok((parent.to_string(), last.replace("~1", "/").replace("~0", "~")))
}

fn add(target: &mut Value, path: &str, value: Value) -> Result<(), String> {
    let (parent, key) = split(path)?;
    match target.pointer_mut(&parent) {
        Some(Value::Object(map)) => {
            map.insert(key, value);
            Ok(())
        }
        Some(Value::Array(items)) => {
            let index = if key == "-" { items.len() } else { key.parse().map_err(|_| format!("bad index in {path}"))? };
            if index > items.len() {
                return Err(format!("index out of range in {path}"));
            }
            items.insert(index, value);
            Ok(())
        }
        _ => Err(format!("no parent for {path}")),
    }
}

fn remove(target: &mut Value, path: &str) -> Result<Value, String> {
    let (parent, key) = split(path)?;
    let missing = || format!("nothing at {path}");
    match target.pointer_mut(&parent) {
        Some(Value::Object(map)) => map.remove(&key).ok_or_else(missing),
        Some(Value::Array(items)) => {
            let index: usize = key.parse().map_err(|_| missing())?;
            if index < items.len() { Ok(items.remove(index)) } else { Err(missing()) }
        }
        _ => Err(missing()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut doc = json!({"a": "b", "c": {"d": "e", "f": "g"}, "list": [1, 2]});
        merge(&mut doc, &json!({"a": "z", "c": {"f": null}, "list": [3], "new": {"x": 1}}));
        assert_eq!(doc, json!({"a": "z", "c": {"d": "e"}, "list": [3], "new": {"x": 1}}));
    }

    #[test]
    fn json_patch_is_all_or_nothing() {
        let mut doc = json!({"metadata": {"finalizers": ["a"]}});
        json_patch(&mut doc, &json!([{"op": "add", "path": "/metadata/finalizers/-", "value": "b"}])).unwrap();
        assert_eq!(doc["metadata"]["finalizers"], json!(["a", "b"]));
        let failing = json!([
            {"op": "replace", "path": "/metadata/finalizers/0", "value": "z"},
            {"op": "test", "path": "/metadata/finalizers/1", "value": "nope"},
        ]);
        assert!(json_patch(&mut doc, &failing).is_err());
        assert_eq!(doc["metadata"]["finalizers"], json!(["a", "b"]), "a failed test changes nothing");
        json_patch(&mut doc, &json!([{"op": "remove", "path": "/metadata/finalizers/0"}])).unwrap();
        assert_eq!(doc["metadata"]["finalizers"], json!(["b"]));
    }
}
