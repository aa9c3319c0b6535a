//! What bindgen needs of `tollgate:policy/types` when it is told to take the types from here
//! (`with`): the values themselves are `policy::values`, written out rather than generated.

pub use crate::policy::values::{Decision, Grant, Prior, Review, UserInfo};
use wasmtime::component::{HasData, Linker};

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
