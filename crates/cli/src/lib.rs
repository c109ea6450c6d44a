//! The sluice operators' command line
