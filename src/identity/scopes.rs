//! SMART on FHIR scopes, parsed into a typed form: v1 (`patient/Observation.read`) and v2
//! (`patient/Communication.rs`, `user/*.cruds`, `system/Patient.r?identifier=…`).
//!
//! A scope only ever narrows what the access policy allows; the policy asks
//! [`Scopes::permits`] for each resource type and permission it would grant.

use std::fmt;

use crate::identity::Permission;

/// The context a resource scope applies in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ScopeContext {
    /// `patient/`: only the token's patient context.
    Patient,
    /// `user/`: whatever the signed-in user may see.
    User,
    /// `system/`: whatever the client's organization may see.
    System,
}

impl ScopeContext {
    fn as_str(self) -> &'static str {
        match self {
            ScopeContext::Patient => "patient",
            ScopeContext::User => "user",
            ScopeContext::System => "system",
        }
    }
}

/// One resource scope such as `user/Observation.rs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceScope {
    pub context: ScopeContext,
    /// `None` for `*`.
    pub resource_type: Option<String>,
    /// Sorted in SMART v2 order: c, r, u, d, s.
    pub permissions: Vec<Permission>,
    /// A v2 granular restriction (`?category=…`), if any.
    pub query: Option<String>,
}

/// A token's scopes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scopes {
    pub resources: Vec<ResourceScope>,
    /// Every other scope (`openid`, `fhirUser`, `launch/patient`, `offline_access`, …).
    pub other: Vec<String>,
}

impl Scopes {
    /// Parses a space-separated scope string. Unknown non-resource scopes are kept as they
    /// are; a malformed resource scope is an error naming it.
    pub fn parse(text: &str) -> Result<Scopes, String> {
        let mut scopes = Scopes::default();
        for item in text.split_whitespace() {
            match parse_resource_scope(item)? {
                Some(scope) => {
                    if !scopes.resources.contains(&scope) {
                        scopes.resources.push(scope);
                    }
                }
                None => {
                    if !scopes.other.iter().any(|o| o == item) {
                        scopes.other.push(item.to_owned());
                    }
                }
            }
        }
        Ok(scopes)
    }

    /// The queries of the granular (query-restricted) scopes of `context` that allow
    /// `permission` on `resource_type` by name (a granular `*` scope grants nothing).
    pub fn granular_queries(&self, context: ScopeContext, resource_type: &str, permission: Permission) -> Vec<String> {
        self.resources
            .iter()
            .filter(|scope| {
                scope.context == context
                    && scope.resource_type.as_deref() == Some(resource_type)
                    && scope.permissions.contains(&permission)
            })
            .filter_map(|scope| scope.query.clone())
            .collect()
    }

    /// Whether a scope of `context` allows `permission` on `resource_type` without a query
    /// restriction. (Granular scopes are applied as filters by the access policy.)
    pub fn permits(&self, context: ScopeContext, resource_type: &str, permission: Permission) -> bool {
        self.resources.iter().any(|scope| {
            scope.context == context
                && scope.query.is_none()
                && scope.resource_type.as_deref().is_none_or(|t| t == resource_type)
                && scope.permissions.contains(&permission)
        })
    }

    /// Whether some scope of `context` allows `permission` on every resource type (`*`).
    pub fn permits_all_types(&self, context: ScopeContext, permission: Permission) -> bool {
        self.resources.iter().any(|scope| {
            scope.context == context
                && scope.query.is_none()
                && scope.resource_type.is_none()
                && scope.permissions.contains(&permission)
        })
    }

    /// The resource types named by scopes of `context` that allow `permission`.
    pub fn named_types(&self, context: ScopeContext, permission: Permission) -> Vec<String> {
        self.resources
            .iter()
            .filter(|s| s.context == context && s.query.is_none() && s.permissions.contains(&permission))
            .filter_map(|s| s.resource_type.clone())
            .collect()
    }

    pub fn has_context(&self, context: ScopeContext) -> bool {
        self.resources.iter().any(|scope| scope.context == context)
    }

    pub fn has(&self, other: &str) -> bool {
        self.other.iter().any(|o| o == other)
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for scope in &self.resources {
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            write!(f, "{scope}")?;
        }
        for other in &self.other {
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            f.write_str(other)?;
        }
        Ok(())
    }
}

impl fmt::Display for ResourceScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let letters: String = self.permissions.iter().map(|p| p.letter()).collect();
        write!(f, "{}/{}.{letters}", self.context.as_str(), self.resource_type.as_deref().unwrap_or("*"))?;
        if let Some(query) = &self.query {
            write!(f, "?{query}")?;
        }
        Ok(())
    }
}

/// `None` when `item` is not a resource scope at all (e.g. `openid`, `launch/patient`).
fn parse_resource_scope(item: &str) -> Result<Option<ResourceScope>, String> {
    let Some((context, rest)) = item.split_once('/') else { return Ok(None) };
    let context = match context {
        "patient" => ScopeContext::Patient,
        "user" => ScopeContext::User,
        "system" => ScopeContext::System,
        _ => return Ok(None),
    };
    let Some((resource_type, access)) = rest.split_once('.') else {
        // `launch/patient` and similar have no dot; `patient/…` without one is malformed.
        return if item.starts_with("launch/") { Ok(None) } else { Err(format!("the scope '{item}' has no permissions")) };
    };
    let resource_type = match resource_type {
        "*" => None,
        name if !name.is_empty() && name.starts_with(|c: char| c.is_ascii_uppercase()) && name.chars().all(|c| c.is_ascii_alphanumeric()) => {
            Some(name.to_owned())
        }
        _ => return Err(format!("the scope '{item}' names no resource type")),
    };
    let (access, query) = match access.split_once('?') {
        Some((access, query)) if !query.is_empty() => (access, Some(query.to_owned())),
        Some(_) => return Err(format!("the scope '{item}' has an empty query")),
        None => (access, None),
    };
    let permissions = match access {
        // SMART v1.
        "read" => vec![Permission::Read, Permission::Search],
        "write" => vec![Permission::Create, Permission::Update, Permission::Delete],
        "*" => Permission::ALL.to_vec(),
        // SMART v2: a non-empty subsequence of "cruds", in that order.
        letters => parse_v2_letters(letters).ok_or_else(|| format!("the scope '{item}' has invalid permissions '{letters}'"))?,
    };
    if query.is_some() && matches!(access, "read" | "write" | "*") {
        return Err(format!("the scope '{item}' combines SMART v1 permissions with a query"));
    }
    Ok(Some(ResourceScope { context, resource_type, permissions, query }))
}

fn parse_v2_letters(letters: &str) -> Option<Vec<Permission>> {
    let mut permissions = Vec::new();
    let mut position = 0;
    for letter in letters.chars() {
        let (index, permission) = Permission::ALL.iter().enumerate().find(|(_, p)| p.letter() == letter)?;
        if index < position && !permissions.is_empty() {
            return None;
        }
        if permissions.contains(permission) {
            return None;
        }
        permissions.push(*permission);
        position = index;
    }
    (!permissions.is_empty()).then_some(permissions)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expected: &str) {
        let parsed = Scopes::parse(text).map(|s| s.to_string()).unwrap_or_else(|e| format!("error: {e}"));
        assert_eq!(parsed, expected, "scopes {text:?}");
    }

    #[test]
    fn parses_v1_and_v2_scopes() {
        check("patient/Observation.read", "patient/Observation.rs");
        check("user/*.write", "user/*.cud");
        check("system/*.*", "system/*.cruds");
        check("user/Communication.cruds openid fhirUser", "user/Communication.cruds openid fhirUser");
        check("patient/Observation.rs?category=vital-signs", "patient/Observation.rs?category=vital-signs");
        check("launch/patient offline_access", "launch/patient offline_access");
        check("user/Patient.sr", "error: the scope 'user/Patient.sr' has invalid permissions 'sr'");
        check("user/Patient.rr", "error: the scope 'user/Patient.rr' has invalid permissions 'rr'");
        check("user/Patient.x", "error: the scope 'user/Patient.x' has invalid permissions 'x'");
        check("user/patient.r", "error: the scope 'user/patient.r' names no resource type");
        check("user/Patient", "error: the scope 'user/Patient' has no permissions");
        check("user/Patient.read?x=1", "error: the scope 'user/Patient.read?x=1' combines SMART v1 permissions with a query");
    }

    #[test]
    fn permits_follow_context_type_and_letters() {
        let scopes = Scopes::parse("user/Observation.rs patient/*.r system/Patient.c user/Condition.r?category=x").unwrap_or_default();
        assert!(scopes.permits(ScopeContext::User, "Observation", Permission::Search));
        assert!(!scopes.permits(ScopeContext::User, "Observation", Permission::Create));
        assert!(!scopes.permits(ScopeContext::User, "Patient", Permission::Read));
        assert!(scopes.permits(ScopeContext::Patient, "Patient", Permission::Read));
        assert!(!scopes.permits(ScopeContext::Patient, "Patient", Permission::Search));
        assert!(scopes.permits(ScopeContext::System, "Patient", Permission::Create));
        assert!(!scopes.permits(ScopeContext::User, "Condition", Permission::Read), "a granular scope is no blanket permission");
        assert_eq!(scopes.granular_queries(ScopeContext::User, "Condition", Permission::Read), vec!["category=x"]);
    }
}
