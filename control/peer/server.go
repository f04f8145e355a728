package peer

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"time"
)

// Server answers signed peer calls. Every request body is read, within
// its kind's bound, before its MAC can be checked; the answer is signed
// as the answer to that request.
type Server struct {
	Key      []byte
	Verifier *Verifier
	// Limit bounds a request body of kind (0: it carries nothing).
	Limit func(kind string) int64
	// Refused counts a refusal by reason (too-large, read, mac, replay,
	// malformed; the listener adds unknown-peer and busy).
	Refused func(reason string)
}

// Handle serves calls of kind at pattern with fn. An error fn returns
// answers 409, or 400 (counted) when it is Malformed.
func (s *Server) Handle(mux *http.ServeMux, pattern, kind string, fn func(body []byte) ([]byte, error)) {
	mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		body, code, reason, err := ReadBody(r, s.Limit(kind))
		if err != nil {
			s.Refused(reason)
			http.Error(w, kind+": "+err.Error(), code)
			return
		}
		if _, err := s.Verifier.Verify(r.Header, kind, body); err != nil {
			s.Refused(Reason(err))
			http.Error(w, "refused: "+Reason(err), http.StatusForbidden)
			return
		}
		out, err := fn(body)
		if errors.Is(err, ErrMalformed) {
			s.Refused("malformed")
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusConflict)
			return
		}
		SignResponse(s.Key, r.Header, w.Header(), kind, out)
		w.Write(out)
	})
}

// Limits of a peer server's connections.
const (
	readTimeout = 5 * time.Second
	idleTimeout = 30 * time.Second
	headerBytes = 8 << 10
)

// Serve serves h on every listener until ctx ends: only connections from
// addresses allowed admits are kept, perPeer at most from each peer
// (over all the listeners), with read and idle timeouts; an answer may
// take write.
func (s *Server) Serve(ctx context.Context, h http.Handler, ls []net.Listener, allowed func(netip.Addr) bool, perPeer int, write time.Duration) {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: readTimeout, ReadTimeout: readTimeout,
		WriteTimeout: write, IdleTimeout: idleTimeout, MaxHeaderBytes: headerBytes}
	slots := NewSlots(perPeer)
	for _, l := range ls {
		go srv.Serve(&Listener{Listener: l, Allowed: allowed, Refused: s.Refused, Slots: slots})
	}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
}
