//! Lock helpers: the one policy for a poisoned lock in library code.
//!
//! A [`Mutex`] or [`RwLock`] is poisoned when a thread panics while holding
//! it. Library code never unwraps a lock (that would turn one panic into a
//! panic in every later caller); it takes the lock through these helpers,
//! which **recover** the guard of a poisoned lock and go on.
//!
//! This is sound because of the rule every critical section in the library
//! follows: it leaves the guarded value valid at every point where it could
//! panic (it updates in place with single assignments or inserts, never
//! holds a half-built invariant across a call that may panic, and never
//! awaits while holding a lock). The value a recovered guard shows is thus
//! one some caller stored; the panic itself is reported by the thread that
//! panicked, and the poisoning adds nothing a caller could act on. See
//! `docs/decisions/084-lock-poisoning.md`.
//!
//! ```
//! use std::sync::Mutex;
//! use tidemark_storage_types::sync::lock;
//!
//! let counter = Mutex::new(0u64);
//! *lock(&counter) += 1;
//! assert_eq!(*lock(&counter), 1);
//! ```

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Locks `mutex`, recovering the guard if another thread panicked while
/// holding it (see [the module](self)).
pub fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Takes `rw_lock` for reading, recovering the guard if another thread
/// panicked while holding it for writing (see [the module](self)).
pub fn read<T: ?Sized>(rw_lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    rw_lock.read().unwrap_or_else(PoisonError::into_inner)
}

/// Takes `rw_lock` for writing, recovering the guard if another thread
/// panicked while holding it (see [the module](self)).
pub fn write<T: ?Sized>(rw_lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    rw_lock.write().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_poisoned_mutex_is_recovered_with_the_last_stored_value() {
        let shared = Arc::new(Mutex::new(vec![1]));
        let in_thread = Arc::clone(&shared);
        let panicked = std::thread::spawn(move || {
            let mut guard = lock(&in_thread);
            guard.push(2);
            panic!("a panic while holding the lock");
        })
        .join();
        assert!(panicked.is_err());
        assert!(shared.is_poisoned());
        lock(&shared).push(3);
        assert_eq!(*lock(&shared), vec![1, 2, 3]);
    }

    #[test]
    fn a_poisoned_rw_lock_is_recovered_for_reading_and_writing() {
        let shared = Arc::new(RwLock::new(1));
        let in_thread = Arc::clone(&shared);
        let panicked = std::thread::spawn(move || {
            let mut guard = write(&in_thread);
            *guard = 2;
            panic!("a panic while holding the lock");
        })
        .join();
        assert!(panicked.is_err());
        assert!(shared.is_poisoned());
        assert_eq!(*read(&shared), 2);
        *write(&shared) = 3;
        assert_eq!(*read(&shared), 3);
    }
}
