//! The `orch_meta` record every persistent backend keeps — which application a database
//! belongs to and its schema version — and the one way it is judged when a store opens.

use super::StoreError;

/// The `application` entry of `orch_meta`.
pub(crate) const APPLICATION: &str = "orch";

/// The detail of [`StoreError::Foreign`] for a database (`what`, e.g. "a SQLite database")
/// that holds `tables` but no `orch_meta` table.
pub(crate) fn no_meta_table(what: &str, tables: &[String]) -> String {
    let shown: Vec<_> = tables.iter().take(5).map(|t| format!("`{t}`")).collect();
    format!(
        "{what} with {} table(s) ({}{}) but no orch_meta table",
        tables.len(),
        shown.join(", "),
        if tables.len() > shown.len() {
            ", …"
        } else {
            ""
        }
    )
}

/// The schema version of the database at `path` from its `orch_meta` entries, refusing one
/// that belongs to another application, names no usable version, or is newer than `supported`.
pub(crate) fn schema_version(
    path: &str,
    application: Option<String>,
    version: Option<String>,
    supported: i64,
) -> Result<i64, StoreError> {
    let foreign = |detail: String| StoreError::Foreign {
        path: path.to_string(),
        detail,
    };
    match application {
        Some(app) if app == APPLICATION => {}
        Some(app) => {
            return Err(foreign(format!(
                "orch_meta says it belongs to application `{app}`"
            )));
        }
        None => return Err(foreign("orch_meta has no `application` entry".into())),
    }
    let Some(version) = version else {
        return Err(foreign("orch_meta has no `schema_version` entry".into()));
    };
    let found: i64 = version
        .trim()
        .parse()
        .map_err(|_| foreign(format!("orch_meta has schema_version `{version}`")))?;
    if found > supported {
        return Err(StoreError::TooNew {
            path: path.to_string(),
            found,
            supported,
        });
    }
    if found < 0 {
        return Err(foreign(format!("orch_meta has schema_version `{version}`")));
    }
    Ok(found)
}
