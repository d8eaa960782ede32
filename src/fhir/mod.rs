//! FHIR knowledge with no HTTP and no SQL in it: wire formats, validation, profiles,
//! references, partial representations and OperationOutcome.

pub mod dates;
pub mod elements;
pub mod format;
pub mod outcome;
pub mod profiles;
pub mod references;
pub mod search_params;
pub mod text;
pub mod validate;
