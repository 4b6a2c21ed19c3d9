//! A value the whole agent reads and a reload replaces: readers take the
//! current `Arc` (cheap, never blocked for long) and keep using it while a
//! reload installs the next.

use std::sync::{Arc, RwLock};

pub struct Live<T: ?Sized>(Arc<RwLock<Arc<T>>>);

impl<T: ?Sized> Clone for Live<T> {
    fn clone(&self) -> Self {
        Live(self.0.clone())
    }
}

impl<T> Live<T> {
    pub fn new(value: T) -> Self {
        Live(Arc::new(RwLock::new(Arc::new(value))))
    }

    pub fn set(&self, value: T) {
        self.set_arc(Arc::new(value));
    }
}

impl<T: ?Sized> Live<T> {
    pub fn from_arc(value: Arc<T>) -> Self {
        Live(Arc::new(RwLock::new(value)))
    }

    /// The current value.
    pub fn get(&self) -> Arc<T> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_arc(&self, value: Arc<T>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = value;
    }
}

impl<T: ?Sized> From<Arc<T>> for Live<T> {
    fn from(value: Arc<T>) -> Self {
        Live::from_arc(value)
    }
}

impl<T: Default> Default for Live<T> {
    fn default() -> Self {
        Live::new(T::default())
    }
}

impl<T: ?Sized + std::fmt::Debug> std::fmt::Debug for Live<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.get().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_keep_what_they_took_while_a_new_value_is_installed() {
        let live = Live::new(1);
        let other = live.clone();
        let held = live.get();
        other.set(2);
        assert_eq!((*held, *live.get()), (1, 2));
    }
}
