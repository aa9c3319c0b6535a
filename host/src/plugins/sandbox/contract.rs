//! The contract's values (`tollgate:policy/types`), written out rather than generated: bindgen
//! gives every record a `Debug` that prints each field, and a review carries the token. Each
//! type is checked against the component's own types when a plugin is prepared, so a field
//! named or typed differently from the WIT refuses every plugin, in every test.

use wasmtime::component::{ComponentType, HasData, Lift, Linker, Lower};

#[derive(ComponentType, Lift, Lower, Clone, Debug, PartialEq, Eq)]
#[component(record)]
pub struct UserInfo {
    #[component(name = "username")]
    pub username: String,
    #[component(name = "uid")]
    pub uid: String,
    #[component(name = "groups")]
    pub groups: Vec<String>,
    #[component(name = "extra")]
    pub extra: Vec<(String, Vec<String>)>,
}

#[derive(ComponentType, Lift, Lower, Clone, Debug, PartialEq, Eq)]
#[component(record)]
pub struct Grant {
    #[component(name = "user")]
    pub user: UserInfo,
    #[component(name = "audiences")]
    pub audiences: Vec<String>,
    #[component(name = "expires-at")]
    pub expires_at: Option<u64>,
}

#[derive(ComponentType, Lift, Lower, Clone, Debug, PartialEq, Eq)]
#[component(record)]
pub struct Prior {
    #[component(name = "grant")]
    pub grant: Grant,
    #[component(name = "plugin")]
    pub plugin: String,
}

/// What a plugin is asked. Its `Debug` leaves the token out.
#[derive(ComponentType, Lift, Lower, Clone)]
#[component(record)]
pub struct Review {
    #[component(name = "token")]
    pub token: String,
    #[component(name = "audiences")]
    pub audiences: Vec<String>,
    #[component(name = "tenant")]
    pub tenant: String,
    #[component(name = "current")]
    pub current: Option<Prior>,
    #[component(name = "request-id")]
    pub request_id: String,
    #[component(name = "client")]
    pub client: Option<String>,
    #[component(name = "attributes")]
    pub attributes: Vec<(String, String)>,
}

impl std::fmt::Debug for Review {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Review")
            .field("token", &format_args!("<{} bytes>", self.token.len()))
            .field("audiences", &self.audiences)
            .field("tenant", &self.tenant)
            .field("current", &self.current)
            .field("request_id", &self.request_id)
            .field("client", &self.client)
            .field("attributes", &self.attributes)
            .finish()
    }
}

#[derive(ComponentType, Lift, Lower, Clone, Debug, PartialEq, Eq)]
#[component(variant)]
pub enum Decision {
    #[component(name = "allow")]
    Allow(Grant),
    #[component(name = "deny")]
    Deny(String),
    #[component(name = "abstain")]
    Abstain,
    #[component(name = "unavailable")]
    Unavailable(String),
}

// What bindgen asks of an interface it is told to take from here (`with`): `types` has no
// functions, so its part of the linker is an empty instance.
pub trait HostWithStore<T>: HasData {}
impl<H: ?Sized + HasData, T> HostWithStore<T> for H {}
pub trait Host {}
impl<H: Host + ?Sized> Host for &mut H {}

pub fn add_to_linker<T: 'static, D>(
    linker: &mut Linker<T>,
    _host_getter: fn(&mut T) -> D::Data<'_>,
) -> wasmtime::Result<()>
where
    D: HostWithStore<T>,
    for<'a> D::Data<'a>: Host,
{
    linker.instance("tollgate:policy/types@0.1.2")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reviews_debug_leaves_the_token_out() {
        let review = Review {
            token: "secret-token-value".into(),
            audiences: vec!["api".into()],
            tenant: "acme".into(),
            current: None,
            request_id: "r1".into(),
            client: None,
            attributes: vec![],
        };
        let shown = format!("{review:?} {review:#?}");
        assert!(!shown.contains("secret-token-value"), "{shown}");
        assert!(shown.contains("<18 bytes>") && shown.contains("acme"), "{shown}");
    }
}
