//! OperationOutcome: the one shape in which the gateway reports problems to clients.

use serde_json::{json, Value};

/// `OperationOutcome.issue.severity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Fatal,
    Error,
    Warning,
    Information,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Fatal => "fatal",
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Information => "information",
        }
    }
}

/// `OperationOutcome.issue.code` (the R4 IssueType value set; only the codes we emit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueCode {
    Invalid,
    Structure,
    Required,
    Value,
    Invariant,
    /// A code that is not in the value set its element requires.
    CodeInvalid,
    Processing,
    NotSupported,
    Duplicate,
    NotFound,
    Deleted,
    TooLong,
    TooCostly,
    Conflict,
    Exception,
    Informational,
    Login,
    Forbidden,
    BusinessRule,
    Transient,
}

impl IssueCode {
    pub fn as_str(self) -> &'static str {
        match self {
            IssueCode::Invalid => "invalid",
            IssueCode::Structure => "structure",
            IssueCode::Required => "required",
            IssueCode::Value => "value",
            IssueCode::Invariant => "invariant",
            IssueCode::CodeInvalid => "code-invalid",
            IssueCode::Processing => "processing",
            IssueCode::NotSupported => "not-supported",
            IssueCode::Duplicate => "duplicate",
            IssueCode::NotFound => "not-found",
            IssueCode::Login => "login",
            IssueCode::Forbidden => "forbidden",
            IssueCode::BusinessRule => "business-rule",
            IssueCode::Transient => "transient",
            IssueCode::Deleted => "deleted",
            IssueCode::TooLong => "too-long",
            IssueCode::TooCostly => "too-costly",
            IssueCode::Conflict => "conflict",
            IssueCode::Exception => "exception",
            IssueCode::Informational => "informational",
        }
    }
}

/// One `OperationOutcome.issue`.
#[derive(Debug, Clone, PartialEq)]
pub struct Issue {
    pub severity: Severity,
    pub code: IssueCode,
    pub diagnostics: String,
    /// FHIRPath-style locations such as `Patient.name[0].given[1]`.
    pub expression: Vec<String>,
}

impl Issue {
    pub fn error(code: IssueCode, diagnostics: impl Into<String>) -> Self {
        Issue { severity: Severity::Error, code, diagnostics: diagnostics.into(), expression: Vec::new() }
    }

    pub fn fatal(code: IssueCode, diagnostics: impl Into<String>) -> Self {
        Issue { severity: Severity::Fatal, code, diagnostics: diagnostics.into(), expression: Vec::new() }
    }

    pub fn warning(code: IssueCode, diagnostics: impl Into<String>) -> Self {
        Issue { severity: Severity::Warning, code, diagnostics: diagnostics.into(), expression: Vec::new() }
    }

    pub fn information(diagnostics: impl Into<String>) -> Self {
        Issue {
            severity: Severity::Information,
            code: IssueCode::Informational,
            diagnostics: diagnostics.into(),
            expression: Vec::new(),
        }
    }

    /// Names the element or parameter this issue concerns.
    pub fn at(mut self, expression: impl Into<String>) -> Self {
        self.expression.push(expression.into());
        self
    }

    /// Puts `prefix` in front of every expression, e.g. `Bundle.entry[2].resource.`.
    pub fn prefixed(mut self, prefix: &str) -> Self {
        for expression in &mut self.expression {
            *expression = format!("{prefix}{expression}");
        }
        self
    }

    fn to_json(&self) -> Value {
        let mut issue = json!({
            "severity": self.severity.as_str(),
            "code": self.code.as_str(),
            "diagnostics": self.diagnostics,
        });
        if !self.expression.is_empty() {
            set(&mut issue, "expression", json!(self.expression));
        }
        issue
    }
}

/// An OperationOutcome under construction.
#[derive(Debug, Clone)]
pub struct OperationOutcome {
    issues: Vec<Issue>,
    request_id: Option<String>,
}

impl OperationOutcome {
    pub fn new(issues: Vec<Issue>) -> Self {
        OperationOutcome { issues, request_id: None }
    }

    /// The request id becomes the outcome's `id`, so a client can quote it to an operator.
    pub fn with_request_id(mut self, request_id: &str) -> Self {
        self.request_id = Some(request_id.to_owned());
        self
    }

    pub fn to_json(&self) -> Value {
        let issues: Vec<Value> = if self.issues.is_empty() {
            vec![Issue::information("All OK").to_json()]
        } else {
            self.issues.iter().map(Issue::to_json).collect()
        };
        let mut outcome = json!({ "resourceType": "OperationOutcome" });
        if let Some(request_id) = &self.request_id {
            set(&mut outcome, "id", json!(request_id));
        }
        set(&mut outcome, "issue", json!(issues));
        outcome
    }
}

/// Sets `key` on a JSON object (the outcome and its issues are always objects).
fn set(target: &mut Value, key: &str, value: Value) {
    if let Some(object) = target.as_object_mut() {
        object.insert(key.to_owned(), value);
    }
}
