//! Tenants of an upstream (`tenant_header`): each request's tenant is one of a fixed number of
//! buckets of the header's value, so that what weir keeps per tenant is bounded whatever clients
//! send: the requests each bucket has in flight. Two tenants whose values fall in one bucket
//! share its count and its turn. Tenant 0 is "no tenant" (no header configured, or none sent).

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU32, Ordering};

/// A tenant's bucket: 0 for none, 1 to [`BUCKETS`] - 1 otherwise.
pub type TenantId = u16;

/// Buckets of tenants; the table of counts is 1 KiB per upstream.
pub const BUCKETS: usize = 256;

/// The bucket of a tenant header's value.
pub fn tenant_of(value: &[u8]) -> TenantId {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut h);
    (h.finish() % (BUCKETS as u64 - 1)) as TenantId + 1
}

/// Requests in flight per tenant bucket.
#[derive(Debug)]
pub struct Tenants {
    in_flight: [AtomicU32; BUCKETS],
    /// `tenant_max_share` in thousandths.
    max_share: AtomicU32,
}

impl Default for Tenants {
    fn default() -> Tenants {
        Tenants {
            in_flight: [const { AtomicU32::new(0) }; BUCKETS],
            max_share: AtomicU32::new(500),
        }
    }
}

impl Tenants {
    pub fn enter(&self, tenant: TenantId) {
        if tenant != 0 {
            self.in_flight[usize::from(tenant)].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn leave(&self, tenant: TenantId) {
        if tenant != 0 {
            self.in_flight[usize::from(tenant)].fetch_sub(1, Ordering::Relaxed);
        }
    }

    pub fn in_flight(&self, tenant: TenantId) -> usize {
        self.in_flight[usize::from(tenant)].load(Ordering::Relaxed) as usize
    }

    pub fn set_max_share(&self, share: f64) {
        let milli = (share.clamp(0.0, 1.0) * 1000.0).round() as u32;
        self.max_share.store(milli, Ordering::Relaxed);
    }

    /// The requests a tenant may have in flight and waiting while others wait: its share of
    /// `limit`, at least one.
    pub fn cap(&self, limit: usize) -> usize {
        let milli = self.max_share.load(Ordering::Relaxed) as usize;
        (limit * milli).div_ceil(1000).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants_fall_in_bounded_buckets_and_shares_round_up() {
        let ids: std::collections::HashSet<TenantId> = (0..10_000)
            .map(|i| tenant_of(format!("t{i}").as_bytes()))
            .collect();
        assert!(ids.iter().all(|t| *t >= 1 && usize::from(*t) < BUCKETS));
        assert!(ids.len() > 200, "values spread over the buckets");
        assert_eq!(tenant_of(b"acme"), tenant_of(b"acme"));
        let t = Tenants::default();
        assert_eq!(t.cap(16), 8);
        t.set_max_share(0.3);
        assert_eq!(t.cap(16), 5);
        assert_eq!(t.cap(1), 1);
        t.enter(3);
        t.enter(0);
        assert_eq!((t.in_flight(3), t.in_flight(0)), (1, 0));
        t.leave(3);
        assert_eq!(t.in_flight(3), 0);
    }
}
