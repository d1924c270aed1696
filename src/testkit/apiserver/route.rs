//! What a request addresses: `/api/v1/namespaces/{ns}/{plural}/{name}/{subresource}` and the `/apis/{group}/…`
//! forms, plus the few query parameters the fake understands.

/// The object (or collection) a request is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The collection without its namespace, which keys the store: `/api/v1/pods`,
    /// `/apis/pingcap.com/v1alpha1/backups`.
    pub resource: String,
    /// `v1`, `pingcap.com/v1alpha1`.
    pub api_version: String,
    pub group: String,
    pub plural: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

impl Target {
    pub fn parse(path: &str) -> Option<Self> {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (group, version, rest) = match segments.as_slice() {
            ["api", version, rest @ ..] => ("", *version, rest),
            ["apis", group, version, rest @ ..] => (*group, *version, rest),
            _ => return None,
        };
        let (namespace, rest) = match rest {
            ["namespaces", namespace, rest @ ..] if !rest.is_empty() => (Some(namespace.to_string()), rest),
            _ => (None, rest),
        };
        let (plural, name, subresource) = match rest {
            [plural] => (*plural, None, None),
            [plural, name] => (*plural, Some(name.to_string()), None),
            [plural, name, sub] => (*plural, Some(name.to_string()), Some(sub.to_string())),
            _ => return None,
        };
        if plural.is_empty() || name.as_deref() == Some("") {
            return None;
        }
        let api_version = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
        let prefix = if group.is_empty() { "api".to_string() } else { format!("apis/{group}") };
        Some(Self {
            resource: format!("/{prefix}/{version}/{plural}"),
            api_version,
            group: group.to_string(),
            plural: plural.to_string(),
            namespace,
            name,
            subresource,
        })
    }

    /// `backups.pingcap.com`, `pods`: how the API server names a resource in its messages.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() { self.plural.clone() } else { format!("{}.{}", self.plural, self.group) }
    }
}

/// The value of `key` in a query string, percent-decoded.
pub fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').filter_map(|pair| pair.split_once('=')).find(|(k, _)| *k == key).map(|(_, v)| percent_decode(v))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An equality-based label selector (`a=b`, `a==b`, `a!=b`, `a`, `!a`, comma-joined).
pub fn selector_matches(selector: &str, labels: &serde_json::Map<String, serde_json::Value>) -> Result<bool, String> {
    for term in selector.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let label = |key: &str| labels.get(key.trim()).and_then(|v| v.as_str());
        let ok = if let Some((key, value)) = term.split_once("!=") {
            label(key) != Some(value.trim())
        } else if let Some((key, value)) = term.split_once("==").or_else(|| term.split_once('=')) {
            label(key) == Some(value.trim())
        } else if let Some(key) = term.strip_prefix('!') {
            label(key).is_none()
        } else if term.contains([' ', '(', ')']) {
            return Err(format!("set-based selector {term:?} is not supported by the fake API server"));
        } else {
            label(term).is_some()
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_core_group_namespaced_and_cluster_paths() {
        let t = Target::parse("/api/v1/namespaces/tidb/pods/basic-tikv-0").unwrap();
        assert_eq!((t.resource.as_str(), t.namespace.as_deref(), t.name.as_deref()), ("/api/v1/pods", Some("tidb"), Some("basic-tikv-0")));
        let t = Target::parse("/apis/pingcap.com/v1alpha1/namespaces/tidb/backups/b/status").unwrap();
        assert_eq!(
            (t.api_version.as_str(), t.subresource.as_deref(), t.qualified()),
            ("pingcap.com/v1alpha1", Some("status"), "backups.pingcap.com".into())
        );
        let t = Target::parse("/api/v1/persistentvolumes").unwrap();
        assert_eq!((t.namespace, t.name), (None, None));
        assert!(Target::parse("/version").is_none());
    }

    #[test]
    fn decodes_queries_and_matches_equality_selectors() {
        let query = "&labelSelector=app.kubernetes.io%2Finstance%3Dbasic%2Cx%21%3Dy";
        let selector = query_param(query, "labelSelector").unwrap();
        assert_eq!(selector, "app.kubernetes.io/instance=basic,x!=y");
        let labels = json!({"app.kubernetes.io/instance": "basic", "x": "z"});
        assert_eq!(selector_matches(&selector, labels.as_object().unwrap()), Ok(true));
        assert_eq!(selector_matches("x==y", labels.as_object().unwrap()), Ok(false));
        assert_eq!(selector_matches("x,!missing", labels.as_object().unwrap()), Ok(true));
        assert!(selector_matches("x in (a,b)", labels.as_object().unwrap()).is_err());
    }
}
