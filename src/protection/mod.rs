//! ECS task scale-in protection.

use crate::config::ConfigError;

/// Scale-in protection settings (`HOLDFAST_PROTECTION*` variables).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ProtectionConfig {}

impl ProtectionConfig {
    pub(crate) fn from_lookup(_get: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        Ok(Self::default())
    }
}
