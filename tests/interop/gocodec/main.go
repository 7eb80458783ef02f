// gocodec runs OpenChoreo's own frame types (internal/cluster-agent/messaging) for the
// cross-language test in tests/interop/test_frames.py.
//
//	gocodec samples   prints one JSON line {"name", "frame"} per frame Go encodes
//	gocodec decode    reads JSON lines {"type", "frame"}, decodes each frame with Go's
//	                  encoding/json into its Go type and prints {"ok", "error",
//	                  "reencoded", "agentKind", "gatewayKind"}
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"

	"github.com/openchoreo/openchoreo/internal/cluster-agent/messaging"
)

type sample struct {
	Name  string `json:"name"`
	Frame any    `json:"frame"`
}

func samples() []sample {
	req := messaging.NewHTTPTunnelRequest("k8s", "POST", "/api/v1/namespaces/a/configmaps",
		"dryRun=All&fieldManager=x", map[string][]string{
			"Content-Type": {"application/json"},
			"Accept":       {"application/json", "*/*"},
		}, []byte("{\"kind\":\"ConfigMap\"}\x00\xff"))
	req.RequestID = "req-1"
	req.GatewayRequestID = "gw-0011"

	minimal := messaging.NewHTTPTunnelRequest("k8s", "GET", "/api", "", nil, nil)
	minimal.RequestID = "req-2"

	ok := messaging.NewHTTPTunnelSuccessResponse(req, 200,
		map[string][]string{"Content-Type": {"application/json"}, "Audit-Id": {"a1"}},
		[]byte("{\"kind\":\"Status\"}"))
	empty := messaging.NewHTTPTunnelSuccessResponse(minimal, 204, nil, nil)
	failed := messaging.NewHTTPTunnelErrorResponse(req, 502, "backend request failed: refused")
	detailed := messaging.NewHTTPTunnelErrorResponse(minimal, 404, "unknown target: x")
	detailed.Error.Details = map[string]any{"target": "x", "known": []any{"k8s"}}

	exec := &messaging.HTTPTunnelStreamInit{
		RequestID: "exec-1", Target: "k8s", Method: "POST",
		Path:      "/api/v1/namespaces/a/pods/p/exec",
		Query:     "command=ls&stderr=true&stdout=true",
		IsUpgrade: true, UpgradeProto: "SPDY/3.1",
	}
	stdout := &messaging.HTTPTunnelStreamChunk{RequestID: "exec-1", Data: []byte{1, 'h', 'i'}, StreamID: 1}
	stdin := &messaging.HTTPTunnelStreamChunk{RequestID: "exec-1", Data: []byte{0, 'l', 's'}, StreamID: 0}
	closed := messaging.NewHTTPTunnelStreamChunk("exec-1", nil, true)
	closedWithError := messaging.NewHTTPTunnelStreamChunk("exec-1", []byte("invalid exec path"), true)

	return []sample{
		{"request", req}, {"request-minimal", minimal},
		{"response", ok}, {"response-empty", empty},
		{"response-error", failed}, {"response-error-details", detailed},
		{"stream-init-exec", exec}, {"chunk-stdout", stdout}, {"chunk-stdin", stdin},
		{"chunk-close", closed}, {"chunk-close-error", closedWithError},
	}
}

type decodeInput struct {
	Type  string `json:"type"`
	Frame string `json:"frame"`
}

type decodeOutput struct {
	OK          bool   `json:"ok"`
	Error       string `json:"error,omitempty"`
	Reencoded   any    `json:"reencoded,omitempty"`
	AgentKind   string `json:"agentKind"`
	GatewayKind string `json:"gatewayKind"`
}

func target(kind string) (any, error) {
	switch kind {
	case "request":
		return &messaging.HTTPTunnelRequest{}, nil
	case "response":
		return &messaging.HTTPTunnelResponse{}, nil
	case "init":
		return &messaging.HTTPTunnelStreamInit{}, nil
	case "chunk":
		return &messaging.HTTPTunnelStreamChunk{}, nil
	}
	return nil, fmt.Errorf("unknown type %q", kind)
}

// agentKind is what OpenChoreo's agent makes of a frame (internal/cluster-agent/agent.go).
func agentKind(raw []byte) string {
	var init messaging.HTTPTunnelStreamInit
	if json.Unmarshal(raw, &init) == nil && init.IsUpgrade && init.RequestID != "" {
		return "init"
	}
	if chunkOf(raw) {
		return "chunk"
	}
	var req messaging.HTTPTunnelRequest
	if json.Unmarshal(raw, &req) != nil || req.RequestID == "" {
		return "dropped"
	}
	return "request"
}

// gatewayKind is what OpenChoreo's gateway makes of a frame (internal/cluster-gateway/server.go).
func gatewayKind(raw []byte) string {
	if chunkOf(raw) {
		return "chunk"
	}
	var resp messaging.HTTPTunnelResponse
	if json.Unmarshal(raw, &resp) != nil || resp.RequestID == "" {
		return "dropped"
	}
	return "response"
}

func chunkOf(raw []byte) bool {
	var chunk messaging.HTTPTunnelStreamChunk
	err := json.Unmarshal(raw, &chunk)
	return err == nil && chunk.RequestID != "" && (chunk.Data != nil || chunk.IsClose)
}

func decode(in decodeInput) decodeOutput {
	raw := []byte(in.Frame)
	out := decodeOutput{AgentKind: agentKind(raw), GatewayKind: gatewayKind(raw)}
	value, err := target(in.Type)
	if err == nil {
		err = json.Unmarshal(raw, value)
	}
	if err != nil {
		out.Error = err.Error()
		return out
	}
	out.OK, out.Reencoded = true, value
	return out
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: gocodec samples|decode")
		os.Exit(2)
	}
	writer := json.NewEncoder(os.Stdout)
	switch os.Args[1] {
	case "samples":
		for _, s := range samples() {
			must(writer.Encode(s))
		}
	case "decode":
		scanner := bufio.NewScanner(os.Stdin)
		scanner.Buffer(make([]byte, 1<<20), 64<<20)
		for scanner.Scan() {
			var in decodeInput
			must(json.Unmarshal(scanner.Bytes(), &in))
			must(writer.Encode(decode(in)))
		}
		must(scanner.Err())
	default:
		fmt.Fprintf(os.Stderr, "unknown command %q\n", os.Args[1])
		os.Exit(2)
	}
}

func must(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
