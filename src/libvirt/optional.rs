//! libvirt functions newer than the oldest client library the agent
//! supports (libvirt 7.0, Debian 11; the binary links symbols up to
//! LIBVIRT_5.7.0 only): looked up in the loaded library at run time, so the
//! same binary starts everywhere and only the feature that needs the
//! function is missing where the library lacks it.

use std::collections::HashMap;
use std::ffi::{c_void, CStr};
use std::sync::{Mutex, OnceLock};

/// The address of `name` in the process (libvirt.so.0 is loaded by the
/// link), or `None` when the client library lacks it. Looked up once.
pub(crate) fn symbol(name: &'static CStr) -> Option<*const c_void> {
    static FOUND: OnceLock<Mutex<HashMap<&'static CStr, usize>>> = OnceLock::new();
    let found = FOUND.get_or_init(Mutex::default);
    if let Ok(m) = found.lock() {
        if let Some(addr) = m.get(name) {
            return (*addr != 0).then_some(*addr as *const c_void);
        }
    }
    // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name only looks
    // the symbol up; it dereferences nothing of ours.
    let addr = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) } as usize;
    if let Ok(mut m) = found.lock() {
        m.insert(name, addr);
    }
    (addr != 0).then_some(addr as *const c_void)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_function_the_library_has_is_found_and_one_it_lacks_is_not() {
        assert!(symbol(c"virConnectOpenReadOnly").is_some());
        assert!(symbol(c"virDomainDoesNotExist").is_none());
        assert!(symbol(c"virDomainDoesNotExist").is_none(), "a miss is remembered too");
    }
}
