//! Envoy v3 resources -> proxy model. (In progress: the xDS issue.)
