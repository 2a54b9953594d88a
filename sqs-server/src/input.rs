//! Reading a JSON 1.0 request: members by name, with SQS's errors for a wrong type or a
//! missing member.

use serde_json::{Map, Value};

use crate::error::{ApiError, SERIALIZATION};

/// The members of one request (or of one batch entry).
#[derive(Debug)]
pub(crate) struct Input<'a>(pub(crate) &'a Map<String, Value>);

fn wrong_type(name: &str, expected: &str) -> ApiError {
    ApiError::new(SERIALIZATION, format!("Member {name} must be {expected}"))
}

impl<'a> Input<'a> {
    /// A string member; `None` when absent or null.
    pub(crate) fn str(&self, name: &str) -> Result<Option<&'a str>, ApiError> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(wrong_type(name, "a string")),
        }
    }

    /// A string member that must be there.
    pub(crate) fn required_str(&self, name: &str) -> Result<&'a str, ApiError> {
        self.str(name)?.ok_or_else(|| ApiError::missing(name))
    }

    /// An integer member; `None` when absent or null.
    pub(crate) fn int(&self, name: &str) -> Result<Option<i64>, ApiError> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n.as_i64().map(Some).ok_or_else(|| wrong_type(name, "an integer")),
            Some(_) => Err(wrong_type(name, "an integer")),
        }
    }

    /// A list of strings; empty when absent.
    pub(crate) fn str_list(&self, name: &str) -> Result<Vec<&'a str>, ApiError> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => {
                items.iter().map(|v| v.as_str().ok_or_else(|| wrong_type(name, "a list of strings"))).collect()
            }
            Some(_) => Err(wrong_type(name, "a list of strings")),
        }
    }

    /// A map of strings to strings, in the request's order; empty when absent.
    pub(crate) fn str_map(&self, name: &str) -> Result<Vec<(&'a str, &'a str)>, ApiError> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Object(map)) => map
                .iter()
                .map(|(k, v)| v.as_str().map(|v| (k.as_str(), v)).ok_or_else(|| wrong_type(name, "a map of strings")))
                .collect(),
            Some(_) => Err(wrong_type(name, "a map of strings")),
        }
    }

    /// A map of names to structures; empty when absent.
    pub(crate) fn struct_map(&self, name: &str) -> Result<Vec<(&'a str, Input<'a>)>, ApiError> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Object(map)) => map
                .iter()
                .map(|(k, v)| {
                    v.as_object().map(|o| (k.as_str(), Input(o))).ok_or_else(|| wrong_type(name, "a map of structures"))
                })
                .collect(),
            Some(_) => Err(wrong_type(name, "a map of structures")),
        }
    }

    /// A list of structures (batch entries); empty when absent.
    pub(crate) fn struct_list(&self, name: &str) -> Result<Vec<Input<'a>>, ApiError> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_object().map(Input).ok_or_else(|| wrong_type(name, "a list of structures")))
                .collect(),
            Some(_) => Err(wrong_type(name, "a list of structures")),
        }
    }
}
