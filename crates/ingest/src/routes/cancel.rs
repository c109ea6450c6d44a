//! `POST /v1/jobs/{id}/cancel`.

use axum::{
    Extension, Json,
    extract::{Path, State},
};
use sluice_protocol::JobStatus;
use sluice_store::Transition;

use crate::{
    AppState,
    auth::Tenant,
    cancel::cancel_job,
    error::ApiError,
    routes::jobs::{JobView, owned_job, store_unavailable},
};

/// Cancels a queued or running job and answers with the job. Cancelling a cancelled job
/// again is a no-op; a job that already ended otherwise is a `409`.
pub async fn cancel(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let (uuid, _) = owned_job(&state, &tenant, &id).await?;
    match cancel_job(&state, uuid, "The job was cancelled by the client.")
        .await
        .map_err(store_unavailable)?
    {
        // A cancel only moves an existing record, which a rejected publish never has.
        None | Some(Transition::Rejected) => {
            return Err(ApiError::NotFound(format!("No job with id '{uuid}'.")));
        }
        Some(Transition::Applied)
        | Some(Transition::Refused {
            current: JobStatus::Cancelled,
        }) => {}
        Some(Transition::Refused { current }) => {
            return Err(ApiError::Conflict(format!(
                "The job already ended ({current}) and cannot be cancelled."
            )));
        }
    }
    let (_, record) = owned_job(&state, &tenant, &id).await?;
    Ok(Json(JobView::from(record)))
}
