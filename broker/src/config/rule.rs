//! An operator authorization rule as written in `config.toml` (`[[acl.rules]]`), and
//! its check at load. What a rule means at run time is `acl::rules`'.

use natter_shared::im::NAMESPACES;
use natter_shared::topic::validate_filter;
use serde::Deserialize;

/// Which operations a rule covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    Read,
    Write,
    ReadWrite,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    Allow,
    Deny,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Who {
    All,
    Admins,
    Anonymous,
    Users,
}

/// One rule as written in the config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub filter: String,
    #[serde(default = "readwrite")]
    pub access: Access,
    #[serde(default = "allow")]
    pub effect: Effect,
    #[serde(default = "all")]
    pub who: Who,
    /// For `who = "users"`.
    #[serde(default)]
    pub users: Vec<String>,
}

fn readwrite() -> Access {
    Access::ReadWrite
}
fn allow() -> Effect {
    Effect::Allow
}
fn all() -> Who {
    Who::All
}

impl Rule {
    /// Checks a rule at config load: a valid filter (placeholders aside), outside the
    /// IM namespaces when the IM layer is on (`im`), and a user list exactly when
    /// `who = "users"`. With IM off, a rule may cover any topic, `#` included.
    ///
    /// # Errors
    /// The reason, for the config error message.
    pub fn validate(&self, im: bool) -> Result<(), String> {
        let sample = self.filter.replace("%u", "u").replace("%c", "c");
        validate_filter(&sample).map_err(|e| format!("filter {:?}: {e}", self.filter))?;
        let first = sample.split('/').next().unwrap_or("");
        if im && (NAMESPACES.contains(&first) || first == "+" || first == "#") {
            return Err(format!(
                "filter {:?} reaches the IM namespaces ({}), which only the built-in rules govern",
                self.filter,
                NAMESPACES.join(", ")
            ));
        }
        if (self.who == Who::Users) == self.users.is_empty() {
            return Err("`users` must be given exactly when who = \"users\"".into());
        }
        Ok(())
    }
}
