//! Per-fiber storage: [`FiberLocal`] keys and the copy-on-write value maps they index.
//!
//! Every fiber owns a [`LocalStorage`]; so does every thread (used outside fibers). A storage is
//! an `Rc` of an immutable-while-shared vector of values, indexed by a number each
//! `FiberLocal` takes once, on first use, from a process-wide counter. Spawning shares the
//! spawner's vector with the child (one `Rc` clone: O(1) however many values are set); the
//! first write on either side copies the vector (its `Rc`'d values are shared, not cloned), so
//! neither side ever sees the other's later writes. Values themselves are `Rc`s too, so a write
//! never needs `T: Clone`, and a value drops when the last storage holding it lets go.
//!
//! Re-entrancy: no borrow of a storage is held while user code runs (a value's `Clone` or
//! `Drop`, a `with` callback), so any of them may use any `FiberLocal`, even the same one.
//! A fiber's storage is emptied by the fiber itself as its last act ([`LocalStorage::clear`]),
//! so values' destructors run inside the fiber, where they may block like any fiber code.

use std::any::Any;
use std::cell::RefCell;
use std::fmt;
use std::marker::PhantomData;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::scheduler::Scheduler;

/// One value, type-erased. An index is only ever used by one `FiberLocal<T>`, so the value at
/// an index is always a `T` of that key.
type Value = Rc<dyn Any>;

/// Values by key index; `None` where a key has no value.
type Values = Vec<Option<Value>>;

/// Where a fiber's (or a thread's) values live. `None`: no value was ever set here (the common
/// case, and free to share).
pub(crate) struct LocalStorage {
    values: RefCell<Option<Rc<Values>>>,
}

impl LocalStorage {
    /// An empty storage.
    pub const fn new() -> LocalStorage {
        LocalStorage {
            values: RefCell::new(None),
        }
    }

    /// A storage that starts with this one's values as they are now: O(1), the values are
    /// shared until either side writes.
    pub fn snapshot(&self) -> LocalStorage {
        LocalStorage {
            values: RefCell::new(self.values.borrow().clone()),
        }
    }

    /// The snapshot a fiber spawned now inherits: the running fiber's values, or the thread's
    /// outside fibers (the root fiber of `fibra::run`).
    pub fn inherit() -> LocalStorage {
        with_current(LocalStorage::snapshot).unwrap_or_else(LocalStorage::new)
    }

    /// Drops every value held here (those still shared with other storages live on there).
    /// Values are moved out first, so their destructors may use `FiberLocal`s freely; values a
    /// destructor sets are dropped in turn. A panicking destructor has been reported by the
    /// panic hook and goes no further (as a detached fiber's panic): this runs at the root of
    /// a fiber, where an unwind would escape into the scheduler.
    pub fn clear(&self) {
        loop {
            let values = self.values.borrow_mut().take();
            let Some(values) = values else { return };
            // One at a time: a second panic while a `Vec`'s drop unwinds would abort.
            if let Ok(values) = Rc::try_unwrap(values) {
                for value in values.into_iter().flatten() {
                    let _ = catch_unwind(AssertUnwindSafe(move || drop(value)));
                }
            }
        }
    }

    /// The value at `index`, as a new `Rc`: the caller uses it with no borrow held.
    #[inline]
    fn get(&self, index: usize) -> Option<Value> {
        // SAFETY: the reference lives only until the `Rc` is cloned, which runs no user code,
        // so nothing can borrow the cell mutably meanwhile. Unguarded, a read costs no
        // read-modify-write of the borrow flag (a third of a `get`).
        let values = unsafe { self.values.try_borrow_unguarded() };
        values
            .unwrap_or_else(|_| writing())
            .as_ref()?
            .get(index)?
            .clone()
    }

    #[inline]
    fn is_set(&self, index: usize) -> bool {
        let values = self.values.borrow();
        values
            .as_ref()
            .is_some_and(|v| v.get(index).is_some_and(Option::is_some))
    }

    /// Puts `value` at `index` and returns what was there, to be dropped by the caller once no
    /// borrow is held.
    fn put(&self, index: usize, value: Option<Value>) -> Option<Value> {
        let mut values = self.values.borrow_mut();
        if value.is_none() && values.as_ref().is_none_or(|v| v.get(index).is_none()) {
            return None;
        }
        let values = values.get_or_insert_with(|| Rc::new(Vec::new()));
        // Copy-on-write: a vector still shared with a parent or child is copied (its values'
        // `Rc`s are cloned, never the values themselves).
        let values = Rc::make_mut(values);
        if values.len() <= index {
            values.resize(index + 1, None);
        }
        std::mem::replace(&mut values[index], value)
    }

    /// Overwrites the `T` at `index` in place when neither the vector nor the value is shared
    /// (no allocation); gives `value` back otherwise.
    ///
    /// # Safety
    /// `index` must be the index of a `FiberLocal<T>`, so that its value, if any, is a `T`.
    #[inline]
    unsafe fn overwrite<T: 'static>(&self, index: usize, value: T) -> Result<T, T> {
        // SAFETY (both blocks): every other borrow of the cell ends before its method returns
        // and runs no user code meanwhile; the one that could be in progress is a `put`'s
        // mutable borrow reached from its allocation (checked here). The reference below lives
        // until the `mem::replace`, which runs no user code either. Unguarded, a write costs no
        // borrow-flag updates.
        if unsafe { self.values.try_borrow_unguarded() }.is_err() {
            writing();
        }
        let values = unsafe { &mut *self.values.as_ptr() };
        let Some(values) = values.as_mut().and_then(Rc::get_mut) else {
            return Err(value);
        };
        let Some(Some(slot)) = values.get_mut(index) else {
            return Err(value);
        };
        match Rc::get_mut(slot) {
            Some(slot) => {
                debug_assert!(slot.is::<T>());
                // SAFETY: the value at a `FiberLocal<T>`'s index is a `T` (caller's contract).
                let slot = unsafe { &mut *(slot as *mut dyn Any).cast::<T>() };
                Ok(std::mem::replace(slot, value))
            }
            None => Err(value),
        }
    }
}

/// A `FiberLocal` was used while its storage was in the middle of a write: only a global
/// allocator (or a similar hook running inside fibra's own bookkeeping) could do that.
#[cold]
fn writing() -> ! {
    panic!(
        "fibra: a FiberLocal was used while its storage was being written (from a global allocator?); FiberLocals cannot be used there"
    )
}

impl fmt::Debug for LocalStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = self
            .values
            .try_borrow()
            .map(|v| v.as_ref().map_or(0, |v| v.iter().flatten().count()));
        match set {
            Ok(n) => write!(f, "LocalStorage({n} values)"),
            Err(_) => write!(f, "LocalStorage(<borrowed>)"),
        }
    }
}

thread_local! {
    /// The values of code running outside fibers.
    static THREAD_STORAGE: LocalStorage = const { LocalStorage::new() };
}

/// Runs `f` on the storage of the running fiber, or of the thread outside fibers. `None` only
/// while the thread's storage is being destroyed (thread exit).
#[inline(always)]
fn with_current<R>(f: impl FnOnce(&LocalStorage) -> R) -> Option<R> {
    if let Some(fiber) = Scheduler::current().and_then(Scheduler::current_fiber) {
        Some(f(&fiber.locals))
    } else {
        THREAD_STORAGE.try_with(f).ok()
    }
}

/// The next key index to hand out. Indices are never reused, so an index names one key (and
/// one `T`) for the life of the process.
static NEXT_INDEX: AtomicUsize = AtomicUsize::new(0);

/// A key to a value of type `T` that each fiber holds for itself, inherited by the fibers it
/// spawns: the fiber counterpart of [`std::thread_local!`], for per-request state.
///
/// ```
/// use fibra::FiberLocal;
/// use std::time::Duration;
///
/// static REQUEST_ID: FiberLocal<u64> = FiberLocal::new();
///
/// fn log(msg: &str) -> String {
///     format!("[request {}] {msg}", REQUEST_ID.get().unwrap_or(0))
/// }
///
/// fibra::run(|| {
///     let handles: Vec<_> = (1..=3)
///         .map(|id| fibra::spawn(move || {
///             REQUEST_ID.set(id);
///             std::thread::sleep(Duration::from_millis(10 * (4 - id))); // interleaves
///             // a child starts with its parent's values
///             let child = fibra::spawn(|| log("child"));
///             (log("handler"), child.join().unwrap())
///         }))
///         .collect();
///     for (id, h) in (1..=3).zip(handles) {
///         let (parent, child) = h.join().unwrap();
///         assert_eq!(parent, format!("[request {id}] handler"));
///         assert_eq!(child, format!("[request {id}] child"));
///     }
/// });
/// ```
///
/// # Semantics
/// - Each fiber has its own value for each key. A spawned fiber starts with its spawner's
///   values as they are at `spawn`; writes ([`set`](Self::set), [`take`](Self::take),
///   [`scope`](Self::scope), ...) on either side are never seen by the other. Inheriting is
///   O(1): the values are shared, not cloned, until one side writes.
/// - Shared means shared: a value with interior mutability (`Cell`, `RefCell`,
///   `Rc<RefCell<_>>`) inherited by a child is the *same* object in both fibers, as with Ruby's
///   fiber storage. Store plain values, or `set` a fresh one, for isolation.
/// - A value drops when the last fiber (or thread) holding it ends or overwrites it. A fiber's
///   values drop inside the fiber as its last act, after its result reached its `JoinHandle`.
/// - Outside fibers a `FiberLocal` is a thread-local: code works the same with and without
///   fibra. The root fiber of [`run`](crate::run) starts with the calling thread's values, and
///   its writes do not flow back to the thread.
/// - No borrow is held while your code runs: a [`with`](Self::with) callback, or a value's
///   `Clone` or `Drop`, may read and write any `FiberLocal`, the same one included.
///
/// `FiberLocal<T>` is only a key, so it is `Send + Sync` whatever `T` is and can live in a
/// `static`; the values never leave the thread they were set on (fibers never change threads),
/// so `T` needs neither `Send` nor `Sync`. Declare keys as `static`s: each key takes, for the
/// life of the process, one slot in the storage of every fiber that sets it.
///
/// During a thread's exit, after its storage is destroyed, reads see no value and writes are
/// dropped.
pub struct FiberLocal<T: 'static> {
    /// The key's index plus one; 0 until the first use assigns one.
    index: AtomicUsize,
    _value: PhantomData<fn() -> T>,
}

impl<T: 'static> FiberLocal<T> {
    /// A key with no value in any fiber. `const`, for `static`s.
    pub const fn new() -> FiberLocal<T> {
        FiberLocal {
            index: AtomicUsize::new(0),
            _value: PhantomData,
        }
    }

    #[inline]
    fn index(&self) -> usize {
        match self.index.load(Ordering::Relaxed) {
            0 => self.assign_index(),
            i => i - 1,
        }
    }

    #[cold]
    fn assign_index(&self) -> usize {
        let fresh = NEXT_INDEX.fetch_add(1, Ordering::Relaxed);
        assert!(
            fresh < usize::MAX - 1,
            "fibra: FiberLocal indices exhausted"
        );
        // Two threads may race on the first use; the first to store wins, the loser's fresh
        // index is simply never used.
        match self
            .index
            .compare_exchange(0, fresh + 1, Ordering::Relaxed, Ordering::Relaxed)
        {
            Ok(_) => fresh,
            Err(winner) => winner - 1,
        }
    }

    fn value(&self) -> Option<Rc<T>> {
        let index = self.index();
        let value = with_current(|s| s.get(index)).flatten()?;
        // SAFETY: read at this key's index.
        Some(unsafe { downcast(value) })
    }

    /// Puts `value` (or no value) in the caller's storage and returns the previous one. The
    /// previous value is returned only after every borrow is released, so dropping it may use
    /// `FiberLocal`s.
    fn put(&self, value: Option<Rc<T>>) -> Option<Rc<T>> {
        let index = self.index();
        let old = with_current(|s| s.put(index, value.map(|v| v as Value))).flatten()?;
        // SAFETY: read at this key's index.
        Some(unsafe { downcast(old) })
    }

    /// Sets the calling fiber's value (the thread's, outside fibers). The previous value is
    /// dropped, unless other fibers still hold it.
    pub fn set(&self, value: T) {
        let index = self.index();
        // Fast path: an unshared value of this fiber is overwritten in place.
        // SAFETY: `index` is this `FiberLocal<T>`'s.
        let value = match with_current(|s| unsafe { s.overwrite(index, value) }) {
            Some(Ok(old)) => {
                drop(old);
                return;
            }
            Some(Err(value)) => value,
            None => return, // the thread's storage is gone (thread exit): drop `value`
        };
        drop(self.put(Some(Rc::new(value))));
    }

    /// A clone of the calling fiber's value, or `None` if it has none.
    pub fn get(&self) -> Option<T>
    where
        T: Clone,
    {
        self.value().map(|v| T::clone(&v))
    }

    /// Calls `f` with a reference to the calling fiber's value (or `None`), without cloning it.
    ///
    /// `f` may use this and other `FiberLocal`s; if it sets this one, `f` keeps seeing the value
    /// it was called with, which stays alive until `f` returns. It may also block or yield:
    /// the value is this fiber's and no other fiber can replace it.
    pub fn with<R>(&self, f: impl FnOnce(Option<&T>) -> R) -> R {
        let value = self.value();
        f(value.as_deref())
    }

    /// Whether the calling fiber has a value.
    pub fn is_set(&self) -> bool {
        let index = self.index();
        with_current(|s| s.is_set(index)).unwrap_or(false)
    }

    /// Removes the calling fiber's value and returns it. A value still shared with other fibers
    /// (inherited and not overwritten since) stays theirs: the caller gets a clone.
    pub fn take(&self) -> Option<T>
    where
        T: Clone,
    {
        self.put(None).map(unwrap_or_clone)
    }

    /// Sets the calling fiber's value and returns the previous one (cloned if other fibers
    /// still share it, as with [`take`](Self::take)).
    pub fn replace(&self, value: T) -> Option<T>
    where
        T: Clone,
    {
        self.put(Some(Rc::new(value))).map(unwrap_or_clone)
    }

    /// Removes the calling fiber's value, dropping it unless other fibers still hold it. Unlike
    /// [`take`](Self::take), needs no `Clone`.
    pub fn remove(&self) {
        drop(self.put(None));
    }

    /// Runs `f` with the calling fiber's value set to `value`, then restores the previous value
    /// (or none), also when `f` panics. Fibers spawned inside `f` inherit `value`.
    ///
    /// ```
    /// static USER: fibra::FiberLocal<&'static str> = fibra::FiberLocal::new();
    /// USER.set("alice");
    /// let seen = USER.scope("bob", || USER.get());
    /// assert_eq!(seen, Some("bob"));
    /// assert_eq!(USER.get(), Some("alice"));
    /// ```
    pub fn scope<R>(&self, value: T, f: impl FnOnce() -> R) -> R {
        struct Restore<'a, T: 'static> {
            key: &'a FiberLocal<T>,
            prior: Option<Option<Rc<T>>>,
        }
        impl<T: 'static> Drop for Restore<'_, T> {
            fn drop(&mut self) {
                if let Some(prior) = self.prior.take() {
                    drop(self.key.put(prior));
                }
            }
        }
        let prior = self.put(Some(Rc::new(value)));
        let _restore = Restore {
            key: self,
            prior: Some(prior),
        };
        f()
    }
}

impl<T: 'static> Default for FiberLocal<T> {
    fn default() -> FiberLocal<T> {
        FiberLocal::new()
    }
}

impl<T: 'static> fmt::Debug for FiberLocal<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FiberLocal")
            .field("type", &std::any::type_name::<T>())
            .field("is_set", &self.is_set())
            .finish()
    }
}

/// The `Rc<T>` behind a value read at a `FiberLocal<T>`'s index, without a `TypeId` check (a
/// virtual call, a measurable share of a `get`).
///
/// # Safety
/// `value` must have been read at the index of a `FiberLocal<T>`. Indices are unique per key and
/// never reused, and only that key's methods store at its index, so the value is a `T`.
#[inline]
unsafe fn downcast<T: 'static>(value: Value) -> Rc<T> {
    debug_assert!(
        value.is::<T>(),
        "a FiberLocal slot held a value of another type"
    );
    // SAFETY: the value is a `T` (see above), allocated by `Rc`; dropping the vtable pointer
    // leaves the data pointer `Rc::from_raw` expects.
    unsafe { Rc::from_raw(Rc::into_raw(value).cast::<T>()) }
}

fn unwrap_or_clone<T: Clone>(value: Rc<T>) -> T {
    Rc::try_unwrap(value).unwrap_or_else(|shared| T::clone(&shared))
}
