//! Rebuilding the search index: after the search parameters change (a custom
//! SearchParameter added), every live resource is re-extracted. Runs at start-up when the
//! parameters' fingerprint differs from the one the index was built with, and on demand
//! with `renraku reindex`.

use crate::error::Result;
use crate::service::Fhir;
use crate::store;

const FINGERPRINT_SETTING: &str = "search_parameters_fingerprint";
const BATCH: i64 = 500;

impl Fhir {
    /// Re-extracts the index rows of every live resource; returns how many were indexed.
    pub async fn reindex(&self) -> Result<u64> {
        let mut indexed = 0u64;
        let mut after: Option<(String, String)> = None;
        let mut transaction = self.store.begin().await?;
        store::audit::clear_index_unchecked_for_maintenance(&mut transaction).await?;
        transaction.commit().await?;
        loop {
            let mut transaction = self.store.begin().await?;
            let rows = store::all_current_unchecked_for_maintenance(
                &mut transaction,
                after.as_ref().map(|(t, i)| (t.as_str(), i.as_str())),
                BATCH,
            )
            .await?;
            let Some(last) = rows.last() else {
                transaction.commit().await?;
                break;
            };
            after = Some((last.resource_type.clone(), last.id.clone()));
            for row in &rows {
                // Each version's compartment, from its own content (a deletion keeps the
                // compartment of the version it deleted).
                let mut entries = Vec::new();
                let mut last_content = None;
                for version in store::versions_unchecked_for_maintenance(&mut transaction, &row.resource_type, &row.id).await? {
                    if let Some(content) = &version.content {
                        let resource: serde_json::Value = serde_json::from_str(content)?;
                        entries = self.index_of(&row.resource_type, &row.id, &resource);
                        last_content = Some(resource);
                    }
                    store::recompartment_unchecked_for_maintenance(&mut transaction, &row.resource_type, &row.id, version.version_id, &entries)
                        .await?;
                }
                let Some(content) = &row.content else {
                    // A deleted resource keeps only the links that outlive its deletion.
                    let kept = last_content
                        .map(|deleted| crate::policy::facts::links_kept_on_delete(&row.resource_type, &row.id, &deleted))
                        .unwrap_or_default();
                    if !kept.is_empty() {
                        store::reindex_unchecked_for_maintenance(&mut transaction, &row.resource_type, &row.id, &row.tenant, &kept).await?;
                    }
                    continue;
                };
                let resource: serde_json::Value = serde_json::from_str(content)?;
                let entries = self.index_of(&row.resource_type, &row.id, &resource);
                store::reindex_unchecked_for_maintenance(&mut transaction, &row.resource_type, &row.id, &row.tenant, &entries).await?;
                indexed += 1;
            }
            transaction.commit().await?;
        }
        let mut connection = self.store.connection().await?;
        store::set_setting(&mut connection, FINGERPRINT_SETTING, &self.index_fingerprint()).await?;
        Ok(indexed)
    }

    /// What the index was built from: the search parameters, and the version of the derived
    /// rows besides them (bumped when the access links were added, and when board items
    /// entered in error joined the board's index, and when AuditEvents got an index of their
    /// own, so a database from before is reindexed at its first start).
    fn index_fingerprint(&self) -> String {
        format!("{}+access-links-2+board-listing-1+audit-index-2", self.search_params.fingerprint())
    }

    /// Reindexes when the search parameters differ from those the index was built with.
    pub async fn reindex_if_changed(&self) -> Result<Option<u64>> {
        let mut connection = self.store.connection().await?;
        let stored = store::setting(&mut connection, FINGERPRINT_SETTING).await?;
        drop(connection);
        if stored.as_deref() == Some(self.index_fingerprint().as_str()) {
            return Ok(None);
        }
        self.reindex().await.map(Some)
    }
}
