package api

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestClient: over a socket Listen made (mode 0600), the client sends
// JSON and decodes the answer; a refusal comes back as the daemon's
// message, an answer without one as its status; out may be a writer.
func TestClient(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "sluice.sock")
	l, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(sock)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket %v %v, want mode 0600", fi, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/echo", func(w http.ResponseWriter, r *http.Request) {
		var req VIPAddRequest
		json.NewDecoder(r.Body).Decode(&req)
		json.NewEncoder(w).Encode(ApplyResponse{Diff: []string{req.VIP + " " + r.URL.Query().Get("q")}})
	})
	mux.HandleFunc("GET /v1/refused", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusConflict)
		json.NewEncoder(w).Encode(ErrorResponse{Error: "vip 10.0.0.1:80/tcp: already exists"})
	})
	mux.HandleFunc("GET /v1/bare", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusTeapot) })
	srv := &http.Server{Handler: mux}
	go srv.Serve(l)
	defer srv.Close()
	c := NewClient(sock)
	ctx := context.Background()
	var out ApplyResponse
	if err := c.Do(ctx, "POST", "/v1/echo", map[string][]string{"q": {"x"}}, VIPAddRequest{VIP: "10.0.0.1:80/tcp"}, &out); err != nil || len(out.Diff) != 1 || out.Diff[0] != "10.0.0.1:80/tcp x" {
		t.Fatalf("echo: %+v %v", out, err)
	}
	if err := c.Do(ctx, "GET", "/v1/refused", nil, nil, nil); err == nil || err.Error() != "vip 10.0.0.1:80/tcp: already exists" {
		t.Errorf("refusal: %v", err)
	}
	if err := c.Do(ctx, "GET", "/v1/bare", nil, nil, nil); err == nil || !strings.Contains(err.Error(), "418") {
		t.Errorf("bare refusal: %v", err)
	}
	var buf bytes.Buffer
	if err := c.Do(ctx, "POST", "/v1/echo", nil, []byte(`{"vip":"raw"}`), &buf); err != nil || !strings.Contains(buf.String(), "raw ") {
		t.Errorf("raw body to a writer: %q %v", buf.String(), err)
	}
}
