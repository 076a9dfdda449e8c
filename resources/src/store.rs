//! The in-memory resource store: get, list, write with owner checks, and watch.
//!
//! Every change gets the next store *revision* and goes into a bounded history. A watcher is a
//! cursor into that history, so it never misses an event: it reads every change after its
//! bookmark, or — if it fell so far behind that the history moved on — gets
//! [`WatchError::Expired`] and relists, never a silent gap.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use crate::resource::{DynSpec, Kind, Metadata, Phase, Resource, Spec};

/// Why a store operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("{kind} {id:?} is owned by {owner:?}; {writer:?} may not write it")]
    Owner {
        kind: Kind,
        id: String,
        owner: String,
        writer: String,
    },
    #[error("{kind} {id:?} does not exist")]
    NotFound { kind: Kind, id: String },
    #[error("{kind} {id:?} already exists")]
    Exists { kind: Kind, id: String },
    #[error("{kind} {id:?} is being torn down; it cannot be updated")]
    TearingDown { kind: Kind, id: String },
    #[error("{kind} {id:?} still has finalizers {finalizers:?}")]
    HasFinalizers {
        kind: Kind,
        id: String,
        finalizers: Vec<String>,
    },
    #[error("{kind} {id:?} holds a spec of another type")]
    TypeMismatch { kind: Kind, id: String },
}

/// Why a watch stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WatchError {
    #[error(
        "bookmark {bookmark} is older than the store's history (oldest kept: {oldest}); list again"
    )]
    Expired { bookmark: u64, oldest: u64 },
}

/// What happened to a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Created,
    Updated,
    Destroyed,
    /// Not a change: the initial listing is complete up to `revision`; resume from here.
    Bookmark,
}

/// One change, or a bookmark.
#[derive(Debug, Clone)]
pub struct Event {
    pub kind: EventKind,
    pub revision: u64,
    /// The resource after the change (before it, for `Destroyed`); `None` for bookmarks.
    pub resource: Option<Arc<Resource>>,
}

struct State {
    revision: u64,
    resources: HashMap<Kind, BTreeMap<String, Arc<Resource>>>,
    history: VecDeque<Arc<Event>>,
}

struct Inner {
    state: Mutex<State>,
    notify: watch::Sender<u64>,
    history_cap: usize,
}

/// The store; cheap to clone (all clones share one state).
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("revision", &self.revision())
            .finish()
    }
}

impl Default for Store {
    fn default() -> Self {
        Store::with_history(65_536)
    }
}

/// A write of one resource: what to set, what to check.
enum Write<'a> {
    Apply {
        spec: Arc<dyn DynSpec>,
        labels: Option<&'a BTreeMap<String, String>>,
    },
    Teardown,
    Destroy,
    AddFinalizer(&'a str),
    RemoveFinalizer(&'a str),
}

impl Store {
    /// A store that keeps the last `history` events for watchers to catch up from.
    pub fn with_history(history: usize) -> Self {
        let (notify, _) = watch::channel(0);
        Store {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    revision: 0,
                    resources: HashMap::new(),
                    history: VecDeque::with_capacity(history.min(4096)),
                }),
                notify,
                history_cap: history.max(1),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave State half-written: every mutation below
        // is a single insert/remove after all checks, so the poisoned data is still consistent.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The revision of the last change.
    pub fn revision(&self) -> u64 {
        self.lock().revision
    }

    pub fn get_dyn(&self, kind: &Kind, id: &str) -> Option<Arc<Resource>> {
        self.lock().resources.get(kind)?.get(id).cloned()
    }

    pub fn get<T: Spec>(&self, id: &str) -> Option<(Metadata, T)> {
        let r = self.get_dyn(&Kind::of::<T>(), id)?;
        let spec = r.spec::<T>()?.clone();
        Some((r.metadata.clone(), spec))
    }

    /// Every resource of `kind`, ordered by id.
    pub fn list_dyn(&self, kind: &Kind) -> Vec<Arc<Resource>> {
        self.lock()
            .resources
            .get(kind)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    pub fn list<T: Spec>(&self) -> Vec<(Metadata, T)> {
        self.list_dyn(&Kind::of::<T>())
            .into_iter()
            .filter_map(|r| Some((r.metadata.clone(), r.spec::<T>()?.clone())))
            .collect()
    }

    /// Every kind that has resources now.
    pub fn kinds(&self) -> Vec<Kind> {
        let mut k: Vec<Kind> = self
            .lock()
            .resources
            .iter()
            .filter(|(_, m)| !m.is_empty())
            .map(|(k, _)| k.clone())
            .collect();
        k.sort();
        k
    }

    /// Creates or updates `id` as `owner`. An unchanged spec and labels change nothing (no
    /// version bump, no event), which is what keeps level-triggered controllers from looping.
    pub fn apply<T: Spec>(&self, owner: &str, id: &str, spec: T) -> Result<(), StoreError> {
        self.apply_with(owner, id, spec, None)
    }

    /// Like [`Store::apply`], also setting the labels.
    pub fn apply_labeled<T: Spec>(
        &self,
        owner: &str,
        id: &str,
        spec: T,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), StoreError> {
        self.apply_with(owner, id, spec, Some(labels))
    }

    fn apply_with<T: Spec>(
        &self,
        owner: &str,
        id: &str,
        spec: T,
        labels: Option<&BTreeMap<String, String>>,
    ) -> Result<(), StoreError> {
        let spec = Arc::new(spec);
        self.write(&Kind::of::<T>(), id, owner, Write::Apply { spec, labels })
    }

    /// Makes the resources of type `T` that `owner` owns exactly `desired`: applies each and
    /// tears down (then destroys, once finalizers allow) every other one it owns. The one way
    /// every publisher keeps a set of outputs.
    pub fn sync_owned<T: Spec>(
        &self,
        owner: &str,
        desired: &BTreeMap<String, T>,
    ) -> Result<(), StoreError> {
        let kind = Kind::of::<T>();
        for (id, spec) in desired {
            self.apply(owner, id, spec.clone())?;
        }
        for r in self.list_dyn(&kind) {
            let md = &r.metadata;
            if md.owner != owner || desired.contains_key(&md.id) {
                continue;
            }
            if md.phase == Phase::Running {
                self.teardown(&kind, &md.id, owner)?;
            }
            if md.finalizers.is_empty() {
                self.destroy(&kind, &md.id, owner)?;
            }
        }
        Ok(())
    }

    /// Creates `id`, failing if it exists.
    pub fn create<T: Spec>(&self, owner: &str, id: &str, spec: T) -> Result<(), StoreError> {
        let kind = Kind::of::<T>();
        if self.get_dyn(&kind, id).is_some() {
            return Err(StoreError::Exists {
                kind,
                id: id.to_string(),
            });
        }
        self.apply(owner, id, spec)
    }

    /// Marks `id` as tearing down; consumers see the phase change and drop their finalizers.
    pub fn teardown(&self, kind: &Kind, id: &str, owner: &str) -> Result<(), StoreError> {
        self.write(kind, id, owner, Write::Teardown)
    }

    /// Removes `id`; refused while finalizers remain.
    pub fn destroy(&self, kind: &Kind, id: &str, owner: &str) -> Result<(), StoreError> {
        self.write(kind, id, owner, Write::Destroy)
    }

    /// Any component may hold a resource with a finalizer, not only its owner.
    pub fn add_finalizer(&self, kind: &Kind, id: &str, finalizer: &str) -> Result<(), StoreError> {
        self.write(kind, id, "", Write::AddFinalizer(finalizer))
    }

    pub fn remove_finalizer(
        &self,
        kind: &Kind,
        id: &str,
        finalizer: &str,
    ) -> Result<(), StoreError> {
        self.write(kind, id, "", Write::RemoveFinalizer(finalizer))
    }

    fn write(&self, kind: &Kind, id: &str, owner: &str, op: Write<'_>) -> Result<(), StoreError> {
        let mut st = self.lock();
        let existing = st.resources.get(kind).and_then(|m| m.get(id)).cloned();
        let not_found = || StoreError::NotFound {
            kind: kind.clone(),
            id: id.to_string(),
        };
        let check_owner = |r: &Resource| {
            if r.metadata.owner != owner {
                Err(StoreError::Owner {
                    kind: kind.clone(),
                    id: id.to_string(),
                    owner: r.metadata.owner.clone(),
                    writer: owner.to_string(),
                })
            } else {
                Ok(())
            }
        };
        let revision = st.revision + 1;
        let (event_kind, new): (EventKind, Option<Resource>) = match op {
            Write::Apply { spec, labels } => match &existing {
                None => (
                    EventKind::Created,
                    Some(Resource {
                        metadata: Metadata {
                            namespace: kind.namespace.clone(),
                            type_: kind.type_.clone(),
                            id: id.to_string(),
                            version: 1,
                            revision,
                            owner: owner.to_string(),
                            phase: Phase::Running,
                            labels: labels.cloned().unwrap_or_default(),
                            finalizers: BTreeSet::new(),
                        },
                        spec,
                    }),
                ),
                Some(r) => {
                    check_owner(r)?;
                    if r.metadata.phase == Phase::TearingDown {
                        return Err(StoreError::TearingDown {
                            kind: kind.clone(),
                            id: id.to_string(),
                        });
                    }
                    if !r.spec.as_any().type_id().eq(&spec.as_any().type_id()) {
                        return Err(StoreError::TypeMismatch {
                            kind: kind.clone(),
                            id: id.to_string(),
                        });
                    }
                    let labels_same = labels.is_none_or(|l| *l == r.metadata.labels);
                    if labels_same && r.spec.dyn_eq(spec.as_ref()) {
                        return Ok(());
                    }
                    let mut md = r.metadata.clone();
                    if let Some(l) = labels {
                        md.labels = l.clone();
                    }
                    (EventKind::Updated, Some(Resource { metadata: md, spec }))
                }
            },
            Write::Teardown => {
                let r = existing.as_ref().ok_or_else(not_found)?;
                check_owner(r)?;
                if r.metadata.phase == Phase::TearingDown {
                    return Ok(());
                }
                let mut md = r.metadata.clone();
                md.phase = Phase::TearingDown;
                (
                    EventKind::Updated,
                    Some(Resource {
                        metadata: md,
                        spec: r.spec.clone(),
                    }),
                )
            }
            Write::Destroy => {
                let r = existing.as_ref().ok_or_else(not_found)?;
                check_owner(r)?;
                if !r.metadata.finalizers.is_empty() {
                    return Err(StoreError::HasFinalizers {
                        kind: kind.clone(),
                        id: id.to_string(),
                        finalizers: r.metadata.finalizers.iter().cloned().collect(),
                    });
                }
                (EventKind::Destroyed, None)
            }
            Write::AddFinalizer(f) | Write::RemoveFinalizer(f) => {
                let adding = matches!(op, Write::AddFinalizer(_));
                let r = existing.as_ref().ok_or_else(not_found)?;
                if adding && r.metadata.phase == Phase::TearingDown {
                    return Err(StoreError::TearingDown {
                        kind: kind.clone(),
                        id: id.to_string(),
                    });
                }
                let mut md = r.metadata.clone();
                let changed = if adding {
                    md.finalizers.insert(f.to_string())
                } else {
                    md.finalizers.remove(f)
                };
                if !changed {
                    return Ok(());
                }
                (
                    EventKind::Updated,
                    Some(Resource {
                        metadata: md,
                        spec: r.spec.clone(),
                    }),
                )
            }
        };

        st.revision = revision;
        let stored = match new {
            Some(mut r) => {
                if event_kind == EventKind::Updated {
                    r.metadata.version += 1;
                }
                r.metadata.revision = revision;
                let r = Arc::new(r);
                st.resources
                    .entry(kind.clone())
                    .or_default()
                    .insert(id.to_string(), r.clone());
                r
            }
            None => {
                let map = st.resources.get_mut(kind).ok_or_else(not_found)?;
                let old = map.remove(id).ok_or_else(not_found)?;
                if map.is_empty() {
                    st.resources.remove(kind);
                }
                old
            }
        };
        if st.history.len() >= self.inner.history_cap {
            st.history.pop_front();
        }
        st.history.push_back(Arc::new(Event {
            kind: event_kind,
            revision,
            resource: Some(stored),
        }));
        drop(st);
        self.inner.notify.send_replace(revision);
        Ok(())
    }

    /// Wakes on every change to the store, whatever its kind (the value is the revision): for
    /// a check over several kinds that should run again when any of them changes.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.notify.subscribe()
    }

    /// Watches every resource of `kind`. With `since: None` the watch first replays the current
    /// resources as `Created` and then a `Bookmark`; with `Some(bookmark)` it resumes after it.
    pub fn watch_kind(&self, kind: Kind, since: Option<u64>) -> Watch {
        self.watch(kind, None, since)
    }

    /// Watches one resource.
    pub fn watch_id(&self, kind: Kind, id: &str, since: Option<u64>) -> Watch {
        self.watch(kind, Some(id.to_string()), since)
    }

    fn watch(&self, kind: Kind, id: Option<String>, since: Option<u64>) -> Watch {
        let rx = self.inner.notify.subscribe();
        let mut pending = VecDeque::new();
        let cursor = match since {
            Some(b) => b,
            None => {
                let st = self.lock();
                let rev = st.revision;
                if let Some(m) = st.resources.get(&kind) {
                    let items: Vec<Arc<Resource>> = match &id {
                        Some(id) => m.get(id).cloned().into_iter().collect(),
                        None => m.values().cloned().collect(),
                    };
                    for r in items {
                        pending.push_back(Arc::new(Event {
                            kind: EventKind::Created,
                            revision: r.metadata.revision,
                            resource: Some(r),
                        }));
                    }
                }
                pending.push_back(Arc::new(Event {
                    kind: EventKind::Bookmark,
                    revision: rev,
                    resource: None,
                }));
                rev
            }
        };
        Watch {
            store: self.clone(),
            kind,
            id,
            cursor,
            pending,
            rx,
        }
    }
}

/// A stream of events for one kind (or one resource), in revision order.
#[derive(Debug)]
pub struct Watch {
    store: Store,
    kind: Kind,
    id: Option<String>,
    cursor: u64,
    pending: VecDeque<Arc<Event>>,
    rx: watch::Receiver<u64>,
}

impl Watch {
    /// A watch of the same kind that resumes from the store's current revision, for a watcher
    /// that fell behind and re-reads the state instead of the missed events.
    pub fn resumed_now(old: &Watch) -> Watch {
        let rev = old.store.revision();
        old.store.watch(old.kind.clone(), old.id.clone(), Some(rev))
    }

    /// The revision up to which this watcher has seen every change: resume from it.
    pub fn bookmark(&self) -> u64 {
        self.cursor
    }

    fn matches(&self, ev: &Event) -> bool {
        ev.resource.as_ref().is_some_and(|r| {
            r.metadata.namespace == self.kind.namespace
                && r.metadata.type_ == self.kind.type_
                && self.id.as_deref().is_none_or(|id| r.metadata.id == id)
        })
    }

    /// The next event, if one is ready now.
    pub fn try_next(&mut self) -> Result<Option<Arc<Event>>, WatchError> {
        if let Some(ev) = self.pending.pop_front() {
            return Ok(Some(ev));
        }
        let st = self.store.lock();
        let Some(front) = st.history.front() else {
            self.cursor = self.cursor.max(st.revision);
            return Ok(None);
        };
        let oldest = front.revision;
        if self.cursor + 1 < oldest {
            return Err(WatchError::Expired {
                bookmark: self.cursor,
                oldest,
            });
        }
        // History revisions are contiguous, so the index of `cursor + 1` is computed directly.
        let start = usize::try_from(self.cursor + 1 - oldest).unwrap_or(usize::MAX);
        for ev in st.history.iter().skip(start) {
            self.cursor = ev.revision;
            if self.matches(ev) {
                return Ok(Some(ev.clone()));
            }
        }
        Ok(None)
    }

    /// Waits for the next event.
    pub async fn next(&mut self) -> Result<Arc<Event>, WatchError> {
        loop {
            // Mark the current revision seen *before* looking, so a change made after the look
            // still wakes `changed()`.
            self.rx.borrow_and_update();
            if let Some(ev) = self.try_next()? {
                return Ok(ev);
            }
            if self.rx.changed().await.is_err() {
                // The store is gone; nothing will ever change again.
                std::future::pending::<()>().await;
            }
        }
    }
}
