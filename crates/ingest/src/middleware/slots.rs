//! Bounded shares of long-lived work: synchronous waits and SSE streams.
//!
//! A request permit (`ingest.max_concurrent_requests`) is shared by every tenant, and an
//! SSE stream holds none at all once its answer starts, so without a share per tenant one
//! tenant could hold every synchronous slot or open streams without end. [`Slots`] counts
//! the open ones per tenant (and in total); a [`Slot`] gives its place back when dropped,
//! whatever ends the wait or the stream. The map only holds tenants with an open slot.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

/// Which limit refused a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    Tenant,
    Total,
}

#[derive(Debug)]
pub struct Slots {
    what: &'static str,
    total_max: usize,
    per_tenant: usize,
    open: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    by_tenant: HashMap<Arc<str>, usize>,
}

impl Slots {
    /// `what` names the work in the `sluice_ingest_slots_open` gauge.
    pub fn new(what: &'static str, total_max: usize, per_tenant: usize) -> Arc<Slots> {
        Arc::new(Slots {
            what,
            total_max,
            per_tenant,
            open: Mutex::new(Open::default()),
        })
    }

    /// A slot for `tenant`, unless it or everyone together already holds the most allowed.
    pub fn try_acquire(self: &Arc<Slots>, tenant: &Arc<str>) -> Result<Slot, Full> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.total >= self.total_max {
            return Err(Full::Total);
        }
        let held = open.by_tenant.get(tenant).copied().unwrap_or(0);
        if held >= self.per_tenant {
            return Err(Full::Tenant);
        }
        open.by_tenant.insert(tenant.clone(), held + 1);
        open.total += 1;
        metrics::gauge!("sluice_ingest_slots_open", "kind" => self.what).set(open.total as f64);
        Ok(Slot {
            slots: self.clone(),
            tenant: tenant.clone(),
        })
    }

    fn release(&self, tenant: &str) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.by_tenant.get_mut(tenant) {
            *n -= 1;
            if *n == 0 {
                open.by_tenant.remove(tenant);
            }
        }
        metrics::gauge!("sluice_ingest_slots_open", "kind" => self.what).set(open.total as f64);
    }

    #[cfg(test)]
    fn tenants(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_tenant
            .len()
    }
}

/// One open synchronous wait or stream; its place is given back on drop.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<Slots>,
    tenant: Arc<str>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.release(&self.tenant);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_gets_its_share_and_the_total_holds() {
        let slots = Slots::new("test", 3, 2);
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        let a1 = slots.try_acquire(&a).unwrap();
        let _a2 = slots.try_acquire(&a).unwrap();
        assert_eq!(slots.try_acquire(&a).unwrap_err(), Full::Tenant);
        let _b1 = slots.try_acquire(&b).unwrap();
        assert_eq!(slots.try_acquire(&b).unwrap_err(), Full::Total);
        drop(a1);
        assert!(
            slots.try_acquire(&b).is_ok(),
            "a released place is free again"
        );
    }

    #[test]
    fn tenants_without_open_slots_leave_the_map() {
        let slots = Slots::new("test", 10, 10);
        let held: Vec<_> = (0..5)
            .map(|i| slots.try_acquire(&Arc::from(format!("t{i}"))).unwrap())
            .collect();
        assert_eq!(slots.tenants(), 5);
        drop(held);
        assert_eq!(slots.tenants(), 0);
    }
}
