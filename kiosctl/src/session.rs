//! A session: one connection to the node and how to show what comes back
//! (shared by the subcommands and the live `watch` view).

use anyhow::Result;
use kios_protocol::Request;
use serde::de::DeserializeOwned;

use crate::client::Connection;
use crate::output::Out;
use crate::render::View;

/// A connection and how to show what comes back.
pub struct Session<'a> {
    pub conn: Connection,
    pub out: &'a mut Out,
    pub view: View,
    pub json: bool,
}

impl Session<'_> {
    /// Sends a request and returns its success payload. With `-o json` the
    /// reply line is printed first, whatever it says.
    pub fn ask<T: DeserializeOwned>(&mut self, request: &Request) -> Result<T> {
        let reply = self.conn.call::<T>(request)?;
        if self.json {
            self.out.line(&reply.raw)?;
            self.out.flush()?;
        }
        Ok(reply.body?)
    }
}
