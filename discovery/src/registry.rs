//! The registry: clusters → affiliates → sealed records that expire.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

/// What the server accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_record: usize,
    pub max_affiliates: usize,
    pub max_clusters: usize,
    pub min_ttl: Duration,
    pub max_ttl: Duration,
    /// Observed addresses kept per affiliate.
    pub max_observed: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_record: 16 * 1024,
            max_affiliates: 1000,
            max_clusters: 10_000,
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(30 * 60),
            max_observed: 4,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("the {what} {value:?} is not 1 to 64 of [A-Za-z0-9_-]")]
    BadId { what: &'static str, value: String },
    #[error("the record is {size} bytes; at most {max} are accepted")]
    TooLarge { size: usize, max: usize },
    #[error("the record is empty")]
    Empty,
    #[error("the cluster already has {max} affiliates")]
    TooManyAffiliates { max: usize },
    #[error("the server already holds {max} clusters")]
    TooManyClusters { max: usize },
    #[error("a TTL of {ttl} s is outside {min}..={max} s")]
    BadTtl { ttl: u64, min: u64, max: u64 },
    #[error("too many requests from {0}; slow down")]
    RateLimited(IpAddr),
}

/// An affiliate as clients see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AffiliateView {
    pub id: String,
    pub data: Vec<u8>,
    pub observed: Vec<IpAddr>,
}

/// A change in one cluster, to its watchers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Updated(AffiliateView),
    Deleted(String),
}

#[derive(Debug, Clone)]
struct Record {
    data: Vec<u8>,
    observed: Vec<IpAddr>,
    /// Time since the registry's origin at which it expires.
    expires: Duration,
}

#[derive(Debug)]
struct Cluster {
    affiliates: BTreeMap<String, Record>,
    tx: broadcast::Sender<Change>,
}

impl Cluster {
    fn new() -> Self {
        Cluster {
            affiliates: BTreeMap::new(),
            tx: broadcast::channel(256).0,
        }
    }
}

/// Clusters and their affiliates. Times are durations since any fixed origin.
#[derive(Debug, Default)]
pub struct Registry {
    limits: Limits,
    clusters: HashMap<String, Cluster>,
}

fn check_id(what: &'static str, v: &str) -> Result<(), RegistryError> {
    if (1..=64).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        Ok(())
    } else {
        Err(RegistryError::BadId {
            what,
            value: v.chars().take(80).collect(),
        })
    }
}

fn view(id: &str, r: &Record) -> AffiliateView {
    AffiliateView {
        id: id.to_string(),
        data: r.data.clone(),
        observed: r.observed.clone(),
    }
}

/// The registry's records on disk: expiry as wall-clock seconds, data in base64.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    pub clusters: BTreeMap<String, BTreeMap<String, SnapshotRecord>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SnapshotRecord {
    pub data: String,
    pub observed: Vec<IpAddr>,
    /// Unix seconds.
    pub expires_at: u64,
}

impl Registry {
    pub fn new(limits: Limits) -> Self {
        Registry {
            limits,
            clusters: HashMap::new(),
        }
    }

    /// Creates or refreshes a record; `from` is where the request came from.
    pub fn update(
        &mut self,
        now: Duration,
        cluster: &str,
        id: &str,
        data: Vec<u8>,
        ttl: Duration,
        from: Option<IpAddr>,
    ) -> Result<(), RegistryError> {
        check_id("cluster id", cluster)?;
        check_id("affiliate id", id)?;
        let l = self.limits;
        if data.is_empty() {
            return Err(RegistryError::Empty);
        }
        if data.len() > l.max_record {
            return Err(RegistryError::TooLarge {
                size: data.len(),
                max: l.max_record,
            });
        }
        if ttl < l.min_ttl || ttl > l.max_ttl {
            return Err(RegistryError::BadTtl {
                ttl: ttl.as_secs(),
                min: l.min_ttl.as_secs(),
                max: l.max_ttl.as_secs(),
            });
        }
        if !self.clusters.contains_key(cluster) && self.clusters.len() >= l.max_clusters {
            return Err(RegistryError::TooManyClusters {
                max: l.max_clusters,
            });
        }
        let c = self
            .clusters
            .entry(cluster.to_string())
            .or_insert_with(Cluster::new);
        if !c.affiliates.contains_key(id) && c.affiliates.len() >= l.max_affiliates {
            return Err(RegistryError::TooManyAffiliates {
                max: l.max_affiliates,
            });
        }
        let r = c.affiliates.entry(id.to_string()).or_insert(Record {
            data: Vec::new(),
            observed: Vec::new(),
            expires: now,
        });
        let changed = r.data != data || from.is_some_and(|f| r.observed.first() != Some(&f));
        r.data = data;
        r.expires = now + ttl;
        if let Some(f) = from {
            r.observed.retain(|o| *o != f);
            r.observed.insert(0, f);
            r.observed.truncate(l.max_observed);
        }
        if changed {
            let _ = c.tx.send(Change::Updated(view(id, r)));
        }
        Ok(())
    }

    /// Removes a record; true if it was there.
    pub fn delete(&mut self, cluster: &str, id: &str) -> Result<bool, RegistryError> {
        check_id("cluster id", cluster)?;
        check_id("affiliate id", id)?;
        let Some(c) = self.clusters.get_mut(cluster) else {
            return Ok(false);
        };
        let had = c.affiliates.remove(id).is_some();
        if had {
            let _ = c.tx.send(Change::Deleted(id.to_string()));
        }
        Ok(had)
    }

    /// The live records of a cluster.
    pub fn list(&self, now: Duration, cluster: &str) -> Result<Vec<AffiliateView>, RegistryError> {
        check_id("cluster id", cluster)?;
        Ok(self
            .clusters
            .get(cluster)
            .map(|c| {
                c.affiliates
                    .iter()
                    .filter(|(_, r)| r.expires > now)
                    .map(|(id, r)| view(id, r))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The live records and a receiver of every change after them.
    pub fn watch(
        &mut self,
        now: Duration,
        cluster: &str,
    ) -> Result<(Vec<AffiliateView>, broadcast::Receiver<Change>), RegistryError> {
        let list = self.list(now, cluster)?;
        if !self.clusters.contains_key(cluster) && self.clusters.len() >= self.limits.max_clusters {
            return Err(RegistryError::TooManyClusters {
                max: self.limits.max_clusters,
            });
        }
        let c = self
            .clusters
            .entry(cluster.to_string())
            .or_insert_with(Cluster::new);
        Ok((list, c.tx.subscribe()))
    }

    /// Drops expired records (telling watchers) and empty clusters nobody watches.
    pub fn expire(&mut self, now: Duration) -> usize {
        let mut n = 0;
        for c in self.clusters.values_mut() {
            let gone: Vec<String> = c
                .affiliates
                .iter()
                .filter(|(_, r)| r.expires <= now)
                .map(|(id, _)| id.clone())
                .collect();
            for id in gone {
                c.affiliates.remove(&id);
                let _ = c.tx.send(Change::Deleted(id));
                n += 1;
            }
        }
        self.clusters
            .retain(|_, c| !c.affiliates.is_empty() || c.tx.receiver_count() > 0);
        n
    }

    pub fn len(&self) -> usize {
        self.clusters.values().map(|c| c.affiliates.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Everything live, with expiries as wall-clock times (`wall` is the wall clock at `now`).
    pub fn snapshot(&self, now: Duration, wall: SystemTime) -> Snapshot {
        use base64::Engine as _;
        let wall_secs = wall
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let mut s = Snapshot::default();
        for (cid, c) in &self.clusters {
            for (id, r) in c.affiliates.iter().filter(|(_, r)| r.expires > now) {
                s.clusters.entry(cid.clone()).or_default().insert(
                    id.clone(),
                    SnapshotRecord {
                        data: base64::engine::general_purpose::STANDARD.encode(&r.data),
                        observed: r.observed.clone(),
                        expires_at: wall_secs + (r.expires - now).as_secs().max(1),
                    },
                );
            }
        }
        s
    }

    /// A registry from a snapshot: records already expired by `wall` are dropped, and every
    /// record is checked as an update would be. Returns the registry and what was dropped.
    pub fn restore(limits: Limits, s: &Snapshot, now: Duration, wall: SystemTime) -> (Self, usize) {
        use base64::Engine as _;
        let wall_secs = wall
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let mut reg = Registry::new(limits);
        let mut dropped = 0;
        for (cid, recs) in &s.clusters {
            for (id, r) in recs {
                let Ok(data) = base64::engine::general_purpose::STANDARD.decode(&r.data) else {
                    dropped += 1;
                    continue;
                };
                if r.expires_at <= wall_secs {
                    dropped += 1;
                    continue;
                }
                let ttl = Duration::from_secs(r.expires_at - wall_secs).min(limits.max_ttl);
                let ttl = ttl.max(limits.min_ttl);
                if reg.update(now, cid, id, data, ttl, None).is_err() {
                    dropped += 1;
                    continue;
                }
                if let Some(rec) = reg
                    .clusters
                    .get_mut(cid)
                    .and_then(|c| c.affiliates.get_mut(id))
                {
                    rec.observed = r
                        .observed
                        .iter()
                        .take(limits.max_observed)
                        .copied()
                        .collect();
                }
            }
        }
        (reg, dropped)
    }
}

/// A token bucket per client address: `rate` requests a second, bursts of `burst`.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: HashMap<IpAddr, (f64, Duration)>,
}

impl RateLimiter {
    pub fn new(rate: f64, burst: f64) -> Self {
        RateLimiter {
            rate,
            burst,
            buckets: HashMap::new(),
        }
    }

    pub fn check(&mut self, now: Duration, from: IpAddr) -> Result<(), RegistryError> {
        if self.buckets.len() > 100_000 {
            // Forget idle clients rather than grow without bound.
            let (rate, burst) = (self.rate, self.burst);
            self.buckets
                .retain(|_, (t, at)| *t + (now.saturating_sub(*at)).as_secs_f64() * rate < burst);
        }
        let (tokens, at) = self.buckets.entry(from).or_insert((self.burst, now));
        *tokens = (*tokens + now.saturating_sub(*at).as_secs_f64() * self.rate).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(RegistryError::RateLimited(from))
        }
    }
}

#[cfg(test)]
mod tests;
