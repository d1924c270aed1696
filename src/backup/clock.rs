//! The wall clock, as the record keeps it: in whole seconds.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// Now, to the second: Kubernetes stores times to the second, so anything finer would never compare equal.
pub fn now_time() -> Time {
    Time(jiff::Timestamp::from_second(unix_now()).expect("now is a valid timestamp"))
}

pub fn unix_now() -> i64 {
    jiff::Timestamp::now().as_second()
}
