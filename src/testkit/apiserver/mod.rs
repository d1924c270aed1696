//! An in-memory Kubernetes API server behind `kube::Client::new(server, "default")`: objects kept as JSON,
//! keyed by (collection path, namespace, name), with the write rules this crate relies on (see `store`),
//! fault injection by (verb, path regex), and a log of every request.

mod error;
mod patch;
mod route;
mod store;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use kube::Resource;
use kube::client::Body;
use kube::core::ApiResource;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::faults::{FaultPlan, Times};
use error::ApiError;
use patch::PatchKind;
pub use patch::merge as merge_patch;
use route::{Target, query_param};
use store::Objects;

/// What a request does, as RBAC and the fault plans name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    Get,
    List,
    Watch,
    Create,
    Update,
    Patch,
    Delete,
    DeleteCollection,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiFault {
    /// Answer this HTTP code with a `Status` body (and the reason the API server gives it); nothing is done.
    Status(u16),
    /// The connection fails before the request reaches the server (`kube::Error::Service`).
    Unreachable,
    /// The request is carried out, but the answer is lost on the way back (a connection error).
    LostReply,
    /// Wait this long, then serve the request.
    Delay(Duration),
}

/// One request as the server saw it; `code` is `None` when no answer was sent.
#[derive(Clone, Debug)]
pub struct LoggedRequest {
    pub verb: Verb,
    pub path: String,
    pub query: String,
    pub body: Option<Value>,
    pub code: Option<u16>,
}

struct Matcher {
    verb: Option<Verb>,
    path: regex_lite::Regex,
}

#[derive(Default)]
struct Inner {
    objects: Objects,
    faults: FaultPlan<Matcher, ApiFault>,
    log: Vec<LoggedRequest>,
}

#[derive(Clone, Default)]
pub struct FakeApiServer {
    inner: Arc<Mutex<Inner>>,
}

fn target_of<K: Resource<DynamicType = ()>>(namespace: Option<&str>) -> Target {
    Target::parse(&K::url_path(&(), namespace)).expect("kube builds parseable paths")
}

fn dynamic_target(resource: &ApiResource, namespace: Option<&str>) -> Target {
    Target::parse(&kube::core::DynamicObject::url_path(resource, namespace)).expect("kube builds parseable paths")
}

impl FakeApiServer {
    pub fn new() -> Self {
        Self::default()
    }

    /// A client whose every request this server answers. Needs a Tokio runtime (kube spawns a buffer task).
    pub fn client(&self) -> kube::Client {
        kube::Client::new(self.clone(), "default")
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().expect("fake API server state")
    }

    /// Whether `K` has a `/status` subresource. By default Pods, PVCs and PVs do, and nothing else (in
    /// particular not TiDB Operator's Backup CRD, whose `/status` answers 404).
    pub fn set_status_subresource<K: Resource<DynamicType = ()>>(&self, enabled: bool) {
        self.lock().objects.set_status_subresource(&target_of::<K>(None).resource, enabled);
    }

    /// The next `times` requests with `verb` (any verb for `None`) whose path matches `path_regex` get `fault`.
    pub fn fail(&self, verb: impl Into<Option<Verb>>, path_regex: &str, times: Times, fault: ApiFault) {
        let path = regex_lite::Regex::new(path_regex).expect("a valid path regex");
        self.lock().faults.add(Matcher { verb: verb.into(), path }, times, fault);
    }

    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.lock().log.clone()
    }

    /// Requests with `verb` whose path matches `path_regex`.
    pub fn requests_matching(&self, verb: Verb, path_regex: &str) -> Vec<LoggedRequest> {
        let path = regex_lite::Regex::new(path_regex).expect("a valid path regex");
        self.requests().into_iter().filter(|r| r.verb == verb && path.is_match(&r.path)).collect()
    }

    /// Stores `object` as is (status included), bypassing the write rules; returns it as stored.
    pub fn insert<K>(&self, object: &K) -> K
    where
        K: Resource<DynamicType = ()> + Serialize + DeserializeOwned,
    {
        let target = target_of::<K>(object.meta().namespace.as_deref());
        let stored = self.lock().objects.seed(&target, serde_json::to_value(object).expect("serialisable"));
        serde_json::from_value(stored).expect("stored object deserialises")
    }

    /// Stores an untyped object (e.g. a TidbCluster) of `resource`.
    pub fn insert_dynamic(&self, resource: &ApiResource, object: Value) -> Value {
        let target = dynamic_target(resource, object["metadata"]["namespace"].as_str());
        self.lock().objects.seed(&target, object)
    }

    pub fn get<K>(&self, namespace: Option<&str>, name: &str) -> Option<K>
    where
        K: Resource<DynamicType = ()> + DeserializeOwned,
    {
        let target = target_of::<K>(namespace);
        let key = (target.resource, namespace.unwrap_or_default().to_string(), name.to_string());
        let object = self.lock().objects.raw(&key).cloned()?;
        Some(serde_json::from_value(object).expect("stored object deserialises"))
    }

    /// Takes the object of `resource` away, as if someone else deleted it; returns whether it was there.
    pub fn remove_dynamic(&self, resource: &ApiResource, namespace: Option<&str>, name: &str) -> bool {
        self.remove_at(dynamic_target(resource, namespace), name)
    }

    /// Takes a `K` away, as if someone else deleted it; returns whether it was there.
    pub fn remove<K: Resource<DynamicType = ()>>(&self, namespace: Option<&str>, name: &str) -> bool {
        self.remove_at(target_of::<K>(namespace), name)
    }

    fn remove_at(&self, target: Target, name: &str) -> bool {
        let key = (target.resource, target.namespace.unwrap_or_default(), name.to_string());
        self.lock().objects.remove(&key).is_some()
    }

    /// Every stored object of `K`, in all namespaces.
    pub fn all<K>(&self) -> Vec<K>
    where
        K: Resource<DynamicType = ()> + DeserializeOwned,
    {
        let resource = target_of::<K>(None).resource;
        let objects = self.lock().objects.raw_all(&resource);
        objects.into_iter().map(|o| serde_json::from_value(o).expect("stored object deserialises")).collect()
    }

    async fn handle(&self, parts: http::request::Parts, bytes: &[u8]) -> std::io::Result<Response<Body>> {
        let path = parts.uri.path().to_string();
        let query = parts.uri.query().unwrap_or_default().to_string();
        let target = Target::parse(&path);
        let verb = verb_of(&parts.method, target.as_ref(), &query);
        let body: Option<Value> = serde_json::from_slice(bytes).ok();
        let (index, fault) = {
            let mut inner = self.lock();
            inner.log.push(LoggedRequest { verb, path: path.clone(), query: query.clone(), body: body.clone(), code: None });
            let fault = inner.faults.take(|m| m.verb.is_none_or(|v| v == verb) && m.path.is_match(&path));
            (inner.log.len() - 1, fault)
        };
        let answer = match fault {
            Some(ApiFault::Unreachable) => return Err(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "fake API server: unreachable")),
            Some(ApiFault::Status(code)) => Err(ApiError::injected(code)),
            Some(ApiFault::Delay(delay)) => {
                tokio::time::sleep(delay).await;
                self.serve(verb, target.as_ref(), &query, &parts.headers, body)
            }
            Some(ApiFault::LostReply) | None => self.serve(verb, target.as_ref(), &query, &parts.headers, body),
        };
        let (code, json) = match answer {
            Ok(value) => (if verb == Verb::Create { 201 } else { 200 }, value),
            Err(e) => (e.code, e.status_body(target.as_ref())),
        };
        self.lock().log[index].code = Some(code);
        if fault == Some(ApiFault::LostReply) {
            return Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "fake API server: the answer was lost"));
        }
        let response = Response::builder()
            .status(code)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Body::from(serde_json::to_vec(&json).expect("json")))
            .expect("a valid response");
        Ok(response)
    }

    fn serve(&self, verb: Verb, target: Option<&Target>, query: &str, headers: &http::HeaderMap, body: Option<Value>) -> Result<Value, ApiError> {
        let target = target.ok_or_else(ApiError::no_such_resource)?;
        let objects = &mut self.lock().objects;
        let name = target.name.as_deref().unwrap_or_default();
        let body = || body.clone().ok_or_else(|| ApiError::new(400, "BadRequest", "the request body is not JSON"));
        match verb {
            Verb::Get => objects.get(target, name),
            Verb::List => objects.list(target, query_param(query, "labelSelector").as_deref()),
            Verb::Create if target.subresource.as_deref() == Some("token") && target.plural == "serviceaccounts" => {
                token_request(objects, target, body()?)
            }
            Verb::Create if target.subresource.is_some() => Err(ApiError::no_such_resource()),
            Verb::Create => objects.create(target, body()?),
            Verb::Update => objects.replace(target, name, body()?),
            Verb::Patch => {
                let content_type = headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
                let kind = PatchKind::from_content_type(content_type)
                    .ok_or_else(|| ApiError::new(415, "UnsupportedMediaType", format!("unsupported patch type {content_type:?}")))?;
                objects.patch(target, name, kind, body()?)
            }
            Verb::Delete => objects.delete(target, name, &body().unwrap_or(json!({}))),
            Verb::Watch | Verb::DeleteCollection => {
                Err(ApiError::new(405, "MethodNotAllowed", format!("{verb:?} is not supported by the fake API server")))
            }
        }
    }
}

fn verb_of(method: &http::Method, target: Option<&Target>, query: &str) -> Verb {
    let named = target.is_some_and(|t| t.name.is_some());
    match *method {
        http::Method::GET if named => Verb::Get,
        http::Method::GET if query_param(query, "watch").is_some_and(|w| w == "true" || w == "1") => Verb::Watch,
        http::Method::GET => Verb::List,
        http::Method::POST => Verb::Create,
        http::Method::PUT => Verb::Update,
        http::Method::PATCH => Verb::Patch,
        http::Method::DELETE if named => Verb::Delete,
        _ => Verb::DeleteCollection,
    }
}

/// `POST …/serviceaccounts/{name}/token`: a made-up token for an existing ServiceAccount.
fn token_request(objects: &Objects, target: &Target, request: Value) -> Result<Value, ApiError> {
    let account = Target { subresource: None, ..target.clone() };
    let name = target.name.clone().unwrap_or_default();
    objects.get(&account, &name)?;
    let namespace = target.namespace.clone().unwrap_or_default();
    let expires = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1);
    Ok(json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "metadata": {"name": name, "namespace": namespace},
        "spec": request["spec"],
        "status": {"token": format!("fake-token.{namespace}.{name}"), "expirationTimestamp": expires.to_string()},
    }))
}

impl tower_service::Service<Request<Body>> for FakeApiServer {
    type Response = Response<Body>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Response<Body>>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let server = self.clone();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let bytes = body.collect_bytes().await.map_err(std::io::Error::other)?;
            server.handle(parts, &bytes).await
        })
    }
}
