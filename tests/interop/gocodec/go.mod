// Nested under the peer's module path: Go lets only that tree import its internal/ packages.
module github.com/openchoreo/openchoreo/wpinterop/gocodec

go 1.26

require github.com/openchoreo/openchoreo v0.0.0

// The peer's source beside the repository; the test build rewrites this to
// $WORKFLOWPLANE_PEER_SRC when that is set.
replace github.com/openchoreo/openchoreo => ../../../../shared/peers/openchoreo
