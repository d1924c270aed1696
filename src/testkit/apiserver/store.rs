//! The fake API server's objects and the rules of writing them: resourceVersion, conflicts, the status
//! subresource, finalizers and deletion, generateName.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use super::error::{ApiError, Result};
use super::patch::{self, PatchKind};
use super::route::{Target, selector_matches};

/// (collection path without namespace, namespace or "", name).
pub type Key = (String, String, String);

pub struct Objects {
    items: BTreeMap<Key, Value>,
    revision: u64,
    generated_names: u64,
    with_status: BTreeSet<String>,
    kinds: BTreeMap<String, String>,
}

impl Default for Objects {
    fn default() -> Self {
        let with_status = ["/api/v1/pods", "/api/v1/persistentvolumeclaims", "/api/v1/persistentvolumes"];
        Self {
            items: BTreeMap::new(),
            revision: 0,
            generated_names: 0,
            with_status: with_status.into_iter().map(String::from).collect(),
            kinds: BTreeMap::new(),
        }
    }
}

fn meta(object: &mut Value) -> &mut serde_json::Map<String, Value> {
    if !object["metadata"].is_object() {
        object["metadata"] = json!({});
    }
    object["metadata"].as_object_mut().expect("metadata is an object")
}

/// Sets `field` of the object `map` to `value`, or removes it for `None`.
fn put(map: &mut serde_json::Map<String, Value>, field: &str, value: Option<&Value>) {
    match value {
        Some(value) => map.insert(field.into(), value.clone()),
        None => map.remove(field),
    };
}

fn str_at<'a>(object: &'a Value, field: &str) -> Option<&'a str> {
    object["metadata"][field].as_str()
}

fn finalizers(object: &Value) -> BTreeSet<String> {
    object["metadata"]["finalizers"].as_array().into_iter().flatten().filter_map(|f| f.as_str().map(String::from)).collect()
}

/// Everything but metadata and status: what `generation` counts changes of.
fn body(object: &Value) -> Value {
    let mut body = object.clone();
    if let Some(map) = body.as_object_mut() {
        map.remove("metadata");
        map.remove("status");
    }
    body
}

fn now() -> String {
    jiff::Timestamp::from_second(jiff::Timestamp::now().as_second()).expect("now").to_string()
}

impl Objects {
    pub fn set_status_subresource(&mut self, resource: &str, enabled: bool) {
        if enabled {
            self.with_status.insert(resource.to_string());
        } else {
            self.with_status.remove(resource);
        }
    }

    fn key(t: &Target, name: &str) -> Key {
        (t.resource.clone(), t.namespace.clone().unwrap_or_default(), name.to_string())
    }

    pub fn raw(&self, key: &Key) -> Option<&Value> {
        self.items.get(key)
    }

    /// Takes an object away at once, finalizers or not (as the test's own hand, not the API).
    pub fn remove(&mut self, key: &Key) -> Option<Value> {
        self.items.remove(key)
    }

    pub fn raw_all(&self, resource: &str) -> Vec<Value> {
        self.items.iter().filter(|((r, _, _), _)| r == resource).map(|(_, v)| v.clone()).collect()
    }

    /// Stores `object` as given (status included), as a test's setup would find it.
    pub fn seed(&mut self, t: &Target, mut object: Value) -> Value {
        let name = str_at(&object, "name").expect("a seeded object needs metadata.name").to_string();
        let m = meta(&mut object);
        m.entry("uid").or_insert_with(|| json!(uuid::Uuid::new_v4().to_string()));
        m.entry("creationTimestamp").or_insert_with(|| json!(now()));
        if let Some(ns) = &t.namespace {
            m.insert("namespace".into(), json!(ns));
        }
        self.commit(t, Self::key(t, &name), None, object).expect("a seeded object is valid")
    }

    pub fn get(&self, t: &Target, name: &str) -> Result<Value> {
        match t.subresource.as_deref() {
            None => {}
            Some("status") if self.with_status.contains(&t.resource) => {}
            Some(_) => return Err(ApiError::no_such_resource()),
        }
        self.items.get(&Self::key(t, name)).cloned().ok_or_else(|| ApiError::not_found(t, name))
    }

    pub fn list(&self, t: &Target, selector: Option<&str>) -> Result<Value> {
        let mut items = Vec::new();
        for ((resource, namespace, _), object) in &self.items {
            if resource != &t.resource || t.namespace.as_ref().is_some_and(|ns| ns != namespace) {
                continue;
            }
            let labels = object["metadata"]["labels"].as_object().cloned().unwrap_or_default();
            if selector.map_or(Ok(true), |s| selector_matches(s, &labels)).map_err(|e| ApiError::new(400, "BadRequest", e))? {
                items.push(object.clone());
            }
        }
        let kind = format!("{}List", self.kinds.get(&t.resource).map_or("", String::as_str));
        Ok(json!({"apiVersion": t.api_version, "kind": kind, "metadata": {"resourceVersion": self.revision.to_string()}, "items": items}))
    }

    pub fn create(&mut self, t: &Target, mut object: Value) -> Result<Value> {
        let name = match (str_at(&object, "name"), str_at(&object, "generateName")) {
            (Some(name), _) if !name.is_empty() => name.to_string(),
            (_, Some(prefix)) => {
                self.generated_names += 1;
                format!("{prefix}{:05x}", self.generated_names)
            }
            _ => return Err(ApiError::new(422, "Invalid", "metadata.name or metadata.generateName is required")),
        };
        if let (Some(given), Some(ns)) = (str_at(&object, "namespace"), &t.namespace)
            && given != ns
        {
            return Err(ApiError::new(400, "BadRequest", "the namespace of the provided object does not match the namespace sent on the request"));
        }
        let key = Self::key(t, &name);
        if self.items.contains_key(&key) {
            return Err(ApiError::new(409, "AlreadyExists", format!("{} {name:?} already exists", t.qualified())));
        }
        if self.with_status.contains(&t.resource)
            && let Some(map) = object.as_object_mut()
        {
            map.remove("status");
        }
        let m = meta(&mut object);
        m.insert("name".into(), json!(name));
        if let Some(ns) = &t.namespace {
            m.insert("namespace".into(), json!(ns));
        }
        m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        m.insert("creationTimestamp".into(), json!(now()));
        m.remove("deletionTimestamp");
        self.commit(t, key, None, object)
    }

    /// PUT: the whole object, guarded by the resourceVersion it carries (if any).
    pub fn replace(&mut self, t: &Target, name: &str, object: Value) -> Result<Value> {
        let guard = str_at(&object, "resourceVersion").map(String::from);
        self.write(t, name, guard, |_| Ok(object))
    }

    pub fn patch(&mut self, t: &Target, name: &str, kind: PatchKind, patch_body: Value) -> Result<Value> {
        if kind == PatchKind::Apply && t.subresource.is_none() && !self.items.contains_key(&Self::key(t, name)) {
            let mut object = patch_body;
            meta(&mut object).insert("name".into(), json!(name));
            return self.create(t, object);
        }
        let guard = match kind {
            PatchKind::Json => None,
            _ => str_at(&patch_body, "resourceVersion").map(String::from),
        };
        self.write(t, name, guard, |old| {
            let mut new = old.clone();
            match kind {
                PatchKind::Json => patch::json_patch(&mut new, &patch_body).map_err(|e| ApiError::new(422, "Invalid", e))?,
                _ => patch::merge(&mut new, &patch_body),
            }
            Ok(new)
        })
    }

    fn write(&mut self, t: &Target, name: &str, guard: Option<String>, change: impl FnOnce(&Value) -> Result<Value>) -> Result<Value> {
        let key = Self::key(t, name);
        let old = self.items.get(&key).cloned().ok_or_else(|| ApiError::not_found(t, name))?;
        if let Some(expected) = guard
            && Some(expected.as_str()) != str_at(&old, "resourceVersion")
        {
            return Err(ApiError::conflict(t, name, "the object has been modified; please apply your changes to the latest version and try again"));
        }
        let proposed = change(&old)?;
        let with_status = self.with_status.contains(&t.resource);
        let new = match t.subresource.as_deref() {
            // Where a status subresource exists, the main resource ignores status, and /status ignores the rest.
            None if with_status => {
                let mut new = proposed;
                if let Some(map) = new.as_object_mut() {
                    put(map, "status", old.get("status"));
                }
                new
            }
            None => proposed,
            Some("status") if with_status => {
                let mut new = old.clone();
                if let Some(map) = new.as_object_mut() {
                    put(map, "status", proposed.get("status"));
                }
                new
            }
            Some(_) => return Err(ApiError::no_such_resource()),
        };
        self.commit(t, key, Some(&old), new)
    }

    pub fn delete(&mut self, t: &Target, name: &str, options: &Value) -> Result<Value> {
        let key = Self::key(t, name);
        let old = self.items.get(&key).cloned().ok_or_else(|| ApiError::not_found(t, name))?;
        for (field, label) in [("uid", "UID"), ("resourceVersion", "ResourceVersion")] {
            if let Some(expected) = options["preconditions"][field].as_str()
                && Some(expected) != str_at(&old, field)
            {
                let why = format!(
                    "Precondition failed: {label} in precondition: {expected}, {label} in object meta: {}",
                    str_at(&old, field).unwrap_or_default()
                );
                return Err(ApiError::conflict(t, name, &why));
            }
        }
        if !finalizers(&old).is_empty() {
            if str_at(&old, "deletionTimestamp").is_some() {
                return Ok(old);
            }
            let mut marked = old.clone();
            meta(&mut marked).insert("deletionTimestamp".into(), json!(now()));
            // Set by the server itself, so not subject to the rule that clients may not set it.
            return self.commit(t, key, None, marked);
        }
        self.items.remove(&key);
        Ok(json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                  "details": {"name": name, "group": t.group, "kind": t.plural, "uid": str_at(&old, "uid")}}))
    }

    /// Stores `new` as the next revision, keeping what clients may not change. An object being deleted
    /// whose finalizers are all gone is removed.
    fn commit(&mut self, t: &Target, key: Key, old: Option<&Value>, mut new: Value) -> Result<Value> {
        if let Some(old) = old {
            for field in ["name", "namespace", "uid", "creationTimestamp", "deletionTimestamp", "generation"] {
                put(meta(&mut new), field, old["metadata"].get(field));
            }
            if str_at(old, "deletionTimestamp").is_some() && !finalizers(&new).is_subset(&finalizers(old)) {
                return Err(ApiError::new(
                    422,
                    "Invalid",
                    "metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted",
                ));
            }
            if body(old) != body(&new) {
                let generation = old["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
                meta(&mut new).insert("generation".into(), json!(generation));
            }
        } else {
            meta(&mut new).entry("generation").or_insert(json!(1));
        }
        if let Some(kind) = new["kind"].as_str() {
            self.kinds.entry(t.resource.clone()).or_insert_with(|| kind.to_string());
        } else if let Some(kind) = self.kinds.get(&t.resource) {
            new["kind"] = json!(kind);
        }
        new["apiVersion"] = json!(t.api_version);
        self.revision += 1;
        meta(&mut new).insert("resourceVersion".into(), json!(self.revision.to_string()));
        if str_at(&new, "deletionTimestamp").is_some() && finalizers(&new).is_empty() {
            self.items.remove(&key);
        } else {
            self.items.insert(key, new.clone());
        }
        Ok(new)
    }
}
