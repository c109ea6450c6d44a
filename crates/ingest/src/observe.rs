//! What ingest adds to the request's span once a job is admitted: tenant, job id and
//! priority as attributes (never the prompt). A no-op while spans are not exported.

use sluice_protocol::Priority;
use uuid::Uuid;

use crate::auth::Tenant;

/// Marks the current (request) span with the admitted job.
pub fn admitted(tenant: &Tenant, job: Uuid, priority: Priority) {
    use sluice_telemetry::trace::set_attribute;
    if !sluice_telemetry::trace::exporting() {
        return;
    }
    let span = tracing::Span::current();
    set_attribute(&span, "sluice.tenant", tenant.id.to_string());
    set_attribute(&span, "sluice.job_id", job.to_string());
    set_attribute(&span, "sluice.priority", priority.as_str());
}
