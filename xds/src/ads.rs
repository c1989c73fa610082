//! The ADS client. (In progress: the xDS issue.)
