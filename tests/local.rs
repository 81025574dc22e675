//! `FiberLocal`: per-fiber values, inheritance by spawned fibers (shared, copy-on-write),
//! isolation under interleaving, thread-local behaviour outside fibers, the API's corners and
//! its re-entrancy hazards; and the `thread_local!` bug it fixes.

mod common;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use common::Watchdog;
use fibra::FiberLocal;

/// A small deterministic generator (xorshift64*), so the interleavings are reproducible.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

#[test]
fn each_fiber_has_its_own_value() {
    static VALUE: FiberLocal<u32> = FiberLocal::new();
    let _w = Watchdog::new(Duration::from_secs(30));
    fibra::run(|| {
        assert_eq!(VALUE.get(), None);
        let handles: Vec<_> = (0..10u32)
            .map(|i| {
                fibra::spawn(move || {
                    assert_eq!(VALUE.get(), None);
                    VALUE.set(i);
                    fibra::yield_now();
                    VALUE.get()
                })
            })
            .collect();
        for (i, h) in handles.into_iter().enumerate() {
            assert_eq!(h.join().unwrap(), Some(i as u32));
        }
        assert_eq!(
            VALUE.get(),
            None,
            "children's writes never reach the parent"
        );
    });
}

#[test]
fn a_child_starts_with_its_parents_values_and_neither_sees_the_others_later_writes() {
    static NAME: FiberLocal<String> = FiberLocal::new();
    static OTHER: FiberLocal<u8> = FiberLocal::new();
    let _w = Watchdog::new(Duration::from_secs(30));
    fibra::run(|| {
        NAME.set("parent-at-spawn".into());
        OTHER.set(7);
        let child = fibra::spawn(|| {
            let at_start = (NAME.get(), OTHER.get());
            NAME.set("child".into());
            fibra::yield_now(); // the parent writes now
            let later = (NAME.get(), OTHER.get());
            // A grandchild inherits the child's values, not the parent's.
            let grandchild = fibra::spawn(|| (NAME.get(), OTHER.get())).join().unwrap();
            (at_start, later, grandchild)
        });
        NAME.set("parent-later".into());
        OTHER.remove();
        let (at_start, later, grandchild) = child.join().unwrap();
        assert_eq!(at_start, (Some("parent-at-spawn".into()), Some(7)));
        assert_eq!(later, (Some("child".into()), Some(7)));
        assert_eq!(grandchild, (Some("child".into()), Some(7)));
        assert_eq!(NAME.get().as_deref(), Some("parent-later"));
        assert_eq!(OTHER.get(), None);
    });
}

#[test]
fn inheriting_shares_values_instead_of_cloning_them() {
    /// Counts its clones.
    struct Counted(Rc<Cell<u32>>);
    impl Clone for Counted {
        fn clone(&self) -> Counted {
            self.0.set(self.0.get() + 1);
            Counted(Rc::clone(&self.0))
        }
    }
    static BIG: FiberLocal<Counted> = FiberLocal::new();
    let _w = Watchdog::new(Duration::from_secs(30));
    let clones = Rc::new(Cell::new(0));
    let counter = Rc::clone(&clones);
    fibra::run(move || {
        BIG.set(Counted(counter));
        let handles: Vec<_> = (0..100)
            .map(|_| {
                fibra::spawn(|| {
                    let seen = BIG.with(|v| v.is_some());
                    // Nested spawns share too.
                    fibra::spawn(|| BIG.is_set()).join().unwrap() && seen
                })
            })
            .collect();
        // The parent's write copies its map of values, not the values.
        BIG.remove();
        assert!(handles.into_iter().all(|h| h.join().unwrap()));
    });
    assert_eq!(clones.get(), 0, "no value was cloned to inherit it");
}

#[test]
fn values_drop_when_the_last_fiber_holding_them_ends_inside_that_fiber() {
    /// Which value dropped, in which fiber.
    type DropLog = Rc<RefCell<Vec<(String, Option<u64>)>>>;
    struct Noisy {
        dropped: DropLog,
        label: &'static str,
    }
    impl Drop for Noisy {
        fn drop(&mut self) {
            // Runs inside the fiber that let go of the value last.
            let fiber = fibra::current_id().map(|id| id.as_u64());
            self.dropped.borrow_mut().push((self.label.into(), fiber));
        }
    }
    static HELD: FiberLocal<Noisy> = FiberLocal::new();
    let _w = Watchdog::new(Duration::from_secs(30));
    let dropped = Rc::new(RefCell::new(Vec::new()));
    let log = Rc::clone(&dropped);
    fibra::run(move || {
        HELD.set(Noisy {
            dropped: Rc::clone(&log),
            label: "shared",
        });
        let child = fibra::spawn(|| {
            fibra::sleep(Duration::from_millis(20));
            fibra::current_id().unwrap().as_u64()
        });
        // The parent lets go; the child still holds the value.
        HELD.set(Noisy {
            dropped: Rc::clone(&log),
            label: "parent's second",
        });
        assert!(
            log.borrow().is_empty(),
            "the child still holds the first value"
        );
        let child_id = child.join().unwrap();
        assert_eq!(
            *log.borrow(),
            vec![("shared".to_string(), Some(child_id))],
            "dropped by the child as its last act"
        );
        // Overwriting an unshared value drops it at once, in the writer.
        let me = fibra::current_id().unwrap().as_u64();
        HELD.set(Noisy {
            dropped: Rc::clone(&log),
            label: "third",
        });
        assert_eq!(log.borrow()[1], ("parent's second".to_string(), Some(me)));
    });
    // The root's last value dropped when the root ended.
    let log = dropped.borrow();
    assert_eq!(log.len(), 3);
    assert_eq!(log[2].0, "third");
    assert!(log[2].1.is_some(), "dropped inside the root fiber");
}

#[test]
fn a_value_whose_drop_blocks_parks_only_its_fiber() {
    thread_local! {
        static DROP_DONE: Cell<bool> = const { Cell::new(false) };
    }
    struct SlowDrop;
    impl Drop for SlowDrop {
        fn drop(&mut self) {
            std::thread::sleep(Duration::from_millis(500));
            DROP_DONE.set(true);
        }
    }
    static SLOW: FiberLocal<SlowDrop> = FiberLocal::new();
    let _w = Watchdog::new(Duration::from_secs(30));
    fibra::run(|| {
        let slow = fibra::spawn(|| SLOW.set(SlowDrop));
        let ticker = fibra::spawn(move || {
            for _ in 0..10 {
                fibra::sleep(Duration::from_millis(2));
            }
            DROP_DONE.get()
        });
        slow.join().unwrap(); // returns once the result is in; the drop runs after
        let drop_done_when_ticker_ended = ticker.join().unwrap();
        assert!(
            !drop_done_when_ticker_ended,
            "the ticker ran while the value's destructor slept"
        );
    });
    assert!(DROP_DONE.get(), "run waited for the destructor");
}

#[test]
fn outside_fibers_it_is_a_thread_local_and_the_root_fiber_starts_with_a_copy() {
    static SETTING: FiberLocal<&'static str> = FiberLocal::new();
    let _w = Watchdog::new(Duration::from_secs(30));
    SETTING.set("main thread");
    std::thread::spawn(|| {
        assert_eq!(SETTING.get(), None, "another thread has its own values");
        SETTING.set("other thread");
    })
    .join()
    .unwrap();
    assert_eq!(SETTING.get(), Some("main thread"));

    let (in_root, in_child) = fibra::run(|| {
        let in_root = SETTING.get();
        let in_child = fibra::spawn(|| SETTING.get()).join().unwrap();
        SETTING.set("root");
        (in_root, in_child)
    });
    assert_eq!(in_root, Some("main thread"));
    assert_eq!(in_child, Some("main thread"));
    assert_eq!(
        SETTING.get(),
        Some("main thread"),
        "the root's writes do not flow back to the thread"
    );
}

#[test]
fn take_replace_remove_is_set_and_with() {
    static V: FiberLocal<Vec<u32>> = FiberLocal::new();
    fibra::run(|| {
        assert!(!V.is_set());
        assert_eq!(V.take(), None);
        assert_eq!(V.replace(vec![1]), None);
        assert!(V.is_set());
        assert_eq!(V.replace(vec![2]), Some(vec![1]));
        assert_eq!(V.with(|v| v.map(|v| v.len())), Some(1));
        let child = fibra::spawn(|| {
            // Inherited and shared with the parent: take gives a clone, the parent keeps its own.
            let taken = V.take();
            (taken, V.is_set())
        });
        assert_eq!(child.join().unwrap(), (Some(vec![2]), false));
        assert_eq!(V.take(), Some(vec![2]));
        assert!(!V.is_set());
        V.set(vec![3]);
        V.remove();
        assert_eq!(V.get(), None);
        V.remove(); // removing nothing is fine
    });
}

#[test]
fn scope_restores_the_prior_value_also_on_panic_and_children_inherit_the_scoped_value() {
    static USER: FiberLocal<String> = FiberLocal::new();
    let _w = Watchdog::new(Duration::from_secs(30));
    fibra::run(|| {
        let inner = USER.scope("alice".into(), || {
            let child = fibra::spawn(|| USER.get());
            fibra::yield_now();
            (USER.get(), child.join().unwrap())
        });
        assert_eq!(inner, (Some("alice".into()), Some("alice".into())));
        assert_eq!(USER.get(), None, "restored to no value");

        // A child that outlives the scope keeps the value it inherited.
        let outliving = USER.scope("carol".into(), || {
            fibra::spawn(|| {
                fibra::sleep(Duration::from_millis(10));
                USER.get()
            })
        });
        assert_eq!(USER.get(), None);
        assert_eq!(outliving.join().unwrap().as_deref(), Some("carol"));

        USER.set("outer".into());
        let caught = std::panic::catch_unwind(|| {
            USER.scope("panicking".into(), || {
                fibra::yield_now();
                panic!("inside scope");
            })
        });
        assert!(caught.is_err());
        assert_eq!(USER.get().as_deref(), Some("outer"), "restored on unwind");

        // Nested scopes unwind in order.
        USER.scope("a".into(), || {
            USER.scope("b".into(), || assert_eq!(USER.get().as_deref(), Some("b")));
            assert_eq!(USER.get().as_deref(), Some("a"));
        });
        assert_eq!(USER.get().as_deref(), Some("outer"));
    });
}

#[test]
fn with_callbacks_and_destructors_may_use_fiber_locals_reentrantly() {
    static COUNT: FiberLocal<u32> = FiberLocal::new();
    static LOG: FiberLocal<Vec<String>> = FiberLocal::new();
    struct WritesOnDrop;
    impl Drop for WritesOnDrop {
        fn drop(&mut self) {
            // Reads and writes storage while it is being overwritten or cleared.
            let n = COUNT.get().unwrap_or(0);
            COUNT.set(n + 100);
            let mut log = LOG.take().unwrap_or_default();
            log.push(format!("dropped at {n}"));
            LOG.set(log);
        }
    }
    static GUARD: FiberLocal<WritesOnDrop> = FiberLocal::new();
    fibra::run(|| {
        COUNT.set(1);
        let seen = COUNT.with(|v| {
            COUNT.set(2); // re-entrant write: no BorrowMutError
            let now = COUNT.get();
            (v.copied(), now)
        });
        assert_eq!(seen, (Some(1), Some(2)), "the callback keeps its value");
        assert_eq!(COUNT.get(), Some(2));
        GUARD.set(WritesOnDrop);
        GUARD.set(WritesOnDrop); // the first one's Drop runs with no borrow held
        assert_eq!(COUNT.get(), Some(102));
        assert_eq!(LOG.get(), Some(vec!["dropped at 2".to_string()]));
        // At the fiber's end, the destructor's own writes are dropped too (no leak, no panic).
        fibra::spawn(|| GUARD.set(WritesOnDrop)).join().unwrap();
    });
}

#[test]
fn values_need_not_be_send() {
    static SHARED: FiberLocal<Rc<RefCell<Vec<u32>>>> = FiberLocal::new();
    fibra::run(|| {
        SHARED.set(Rc::new(RefCell::new(vec![])));
        // Shared means shared: an inherited Rc is the same object in the child.
        fibra::spawn(|| SHARED.with(|v| v.unwrap().borrow_mut().push(1)))
            .join()
            .unwrap();
        assert_eq!(*SHARED.get().unwrap().borrow(), vec![1]);
    });
}

#[test]
fn many_threads_each_with_their_own_scheduler_keep_their_values_apart() {
    static ID: FiberLocal<u64> = FiberLocal::new();
    let _w = Watchdog::new(Duration::from_secs(60));
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            std::thread::spawn(move || {
                ID.set(t * 1000);
                fibra::run(|| {
                    let handles: Vec<_> = (0..50u64)
                        .map(|i| {
                            fibra::spawn(move || {
                                let inherited = ID.get();
                                ID.set(t * 1000 + i);
                                std::thread::sleep(Duration::from_micros(200 * (i % 5)));
                                (inherited, ID.get())
                            })
                        })
                        .collect();
                    for (i, h) in handles.into_iter().enumerate() {
                        let (inherited, own) = h.join().unwrap();
                        assert_eq!(inherited, Some(t * 1000));
                        assert_eq!(own, Some(t * 1000 + i as u64));
                    }
                });
                ID.get()
            })
        })
        .collect();
    for (t, th) in threads.into_iter().enumerate() {
        assert_eq!(th.join().unwrap(), Some(t as u64 * 1000));
    }
}

static REQUEST_ID: FiberLocal<u64> = FiberLocal::new();

/// Blocks at a random point: a real `std::thread::sleep` of up to 300 µs (parks the fiber), or a
/// `yield_now`, or nothing.
fn block_randomly(rng: &mut Rng) {
    match rng.below(3) {
        0 => std::thread::sleep(Duration::from_micros(rng.below(300))),
        1 => fibra::yield_now(),
        _ => {}
    }
}

#[test]
fn two_thousand_interleaved_requests_blocking_at_random_points_keep_their_own_ids() {
    let _w = Watchdog::new(Duration::from_secs(120));
    let checks = fibra::run(|| {
        let handles: Vec<_> = (1..=2000u64)
            .map(|id| {
                fibra::spawn(move || {
                    let mut rng = Rng::new(id);
                    let mut checks = 0u32;
                    REQUEST_ID.set(id);
                    for _ in 0..4 {
                        block_randomly(&mut rng);
                        assert_eq!(REQUEST_ID.get(), Some(id), "request {id}");
                        checks += 1;
                    }
                    // Children inherit the id, see it across their own blocking, and their own
                    // writes (a sub-request id) never reach the handler.
                    let children: Vec<_> = (0..2u64)
                        .map(|c| {
                            fibra::spawn(move || {
                                let mut rng = Rng::new(id * 7 + c);
                                let mut checks = 0u32;
                                for _ in 0..3 {
                                    block_randomly(&mut rng);
                                    assert_eq!(REQUEST_ID.get(), Some(id), "child of {id}");
                                    checks += 1;
                                }
                                REQUEST_ID.set(id * 1_000_000 + c);
                                block_randomly(&mut rng);
                                assert_eq!(REQUEST_ID.get(), Some(id * 1_000_000 + c));
                                checks + 1
                            })
                        })
                        .collect();
                    block_randomly(&mut rng);
                    for child in children {
                        checks += child.join().unwrap();
                    }
                    assert_eq!(
                        REQUEST_ID.get(),
                        Some(id),
                        "request {id} after its children"
                    );
                    checks + 1
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum::<u32>()
    });
    assert_eq!(checks, 2000 * (4 + 2 * 4 + 1));
}

/// The bug FiberLocal fixes: a `thread_local!` is one value for every fiber of the thread, so a
/// request that blocks reads the id of whichever request ran last.
#[test]
fn a_thread_local_mixes_interleaved_requests_up_and_a_fiber_local_does_not() {
    thread_local! {
        static THREAD_REQUEST_ID: Cell<u64> = const { Cell::new(0) };
    }
    static FIBER_REQUEST_ID: FiberLocal<u64> = FiberLocal::new();
    let _w = Watchdog::new(Duration::from_secs(30));
    let seen = fibra::run(|| {
        // Request 1 runs first, stores its id, and blocks; request 2 then stores its own.
        let handles: Vec<_> = (1..=2u64)
            .map(|id| {
                fibra::spawn(move || {
                    THREAD_REQUEST_ID.set(id);
                    FIBER_REQUEST_ID.set(id);
                    std::thread::sleep(Duration::from_millis(20 * id));
                    (id, THREAD_REQUEST_ID.get(), FIBER_REQUEST_ID.get())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    // Request 1 woke up to request 2's id in the thread-local: the bug, every time.
    assert_eq!(seen[0], (1, 2, Some(1)));
    assert_eq!(seen[1], (2, 2, Some(2)));
}

#[test]
fn a_panicking_destructor_at_a_fibers_end_goes_no_further() {
    struct PanicsOnDrop(Rc<Cell<u32>>);
    impl Drop for PanicsOnDrop {
        fn drop(&mut self) {
            self.0.set(self.0.get() + 1);
            panic!("destructor of a FiberLocal value");
        }
    }
    static A: FiberLocal<PanicsOnDrop> = FiberLocal::new();
    static B: FiberLocal<PanicsOnDrop> = FiberLocal::new();
    let _w = Watchdog::new(Duration::from_secs(30));
    let drops = Rc::new(Cell::new(0));
    let d = Rc::clone(&drops);
    let result = fibra::run(move || {
        let d2 = Rc::clone(&d);
        let h = fibra::spawn(move || {
            A.set(PanicsOnDrop(Rc::clone(&d2)));
            B.set(PanicsOnDrop(d2));
            7
        });
        assert_eq!(h.join().unwrap(), 7);
        // The scheduler carries on.
        fibra::spawn(|| 8).join().unwrap()
    });
    assert_eq!(result, 8);
    assert_eq!(drops.get(), 2, "both values were dropped");
}
