package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"time"

	"github.com/sluicelb/sluice/cmd/sluice/netlab"
	"github.com/sluicelb/sluice/control/state"
)

// Model is what a lab backend's model server reports: its agent's
// answer (HAProxy's agent-check), its queue gauge (vLLM's
// num_requests_waiting) and whether its gRPC health says SERVING.
type Model struct {
	Agent   string  `json:"agent"`
	Queue   float64 `json:"queue"`
	Serving bool    `json:"serving"`
}

// ModelTarget is the load target the lab gives its backends.
const ModelTarget = 2

var defaultModel = Model{Agent: "up", Serving: true}

func modelPath(backend string) string { return filepath.Join(Dir, backend+".model.json") }

// labBackend is the lab's backend entry for addr: the check given, an
// agent check and a load metric on its model server.
func labBackend(addr string, check state.Check) state.Backend {
	return state.Backend{Addr: addr, Weight: 1, Check: check,
		Agent: &state.Agent{Port: netlab.LabAgentPort},
		Load: &state.Load{Metric: fmt.Sprintf("http://%s:%d/metrics#%s", addr, netlab.LabMetricsPort, netlab.LabQueueSeries),
			Target: ModelTarget}}
}

// startModels runs a model server on every backend, and applies what
// `sluice lab model` writes for each every 100 ms until ctx ends.
func (r *runner) startModels(ctx context.Context) error {
	var err error
	if r.models, err = netlab.StartModelServers(r.lab); err != nil {
		return err
	}
	go func() {
		applied := map[string]Model{}
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			for name, m := range r.models {
				want, err := readModel(name)
				if err != nil || want == applied[name] {
					continue
				}
				m.SetAgent(want.Agent + "\n")
				m.SetQueue(want.Queue)
				m.GRPC.Set("", want.Serving)
				applied[name] = want
			}
		}
	}()
	return nil
}

func readModel(backend string) (Model, error) {
	b, err := os.ReadFile(modelPath(backend))
	if errors.Is(err, os.ErrNotExist) {
		return defaultModel, nil
	}
	if err != nil {
		return Model{}, err
	}
	var m Model
	if err := json.Unmarshal(b, &m); err != nil {
		return Model{}, fmt.Errorf("%s: %w", modelPath(backend), err)
	}
	return m, nil
}

// ModelChange is what `sluice lab model` changes; nil and "" keep the
// current value.
type ModelChange struct {
	Agent *string
	Queue *float64
	GRPC  string // "serving" or "not-serving"
}

// SetModel changes what a lab backend's model server reports, written
// atomically for the runner to apply.
func SetModel(w io.Writer, backend string, ch ModelChange) error {
	if ch.GRPC != "" && ch.GRPC != "serving" && ch.GRPC != "not-serving" {
		return fmt.Errorf("--grpc %q: want serving or not-serving", ch.GRPC)
	}
	if q := ch.Queue; q != nil && (*q < 0 || math.IsNaN(*q) || math.IsInf(*q, 0)) {
		return fmt.Errorf("--queue %v: want a number at least 0", *q)
	}
	st, err := ReadState()
	if err != nil {
		return errors.New("no lab is up (start one with: sluice lab up)")
	}
	if _, ok := st.Host(backend); !ok || backend[0] != 'b' {
		return fmt.Errorf("backend %q: the lab's backends are %s", backend, backendNames(st))
	}
	m, err := readModel(backend)
	if err != nil {
		return err
	}
	if ch.Agent != nil {
		m.Agent = *ch.Agent
	}
	if ch.Queue != nil {
		m.Queue = *ch.Queue
	}
	if ch.GRPC != "" {
		m.Serving = ch.GRPC == "serving"
	}
	b, _ := json.Marshal(m)
	tmp := modelPath(backend) + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	if err := os.Rename(tmp, modelPath(backend)); err != nil {
		return err
	}
	fmt.Fprintf(w, "%s: agent answers %q, queue %g (target %d), gRPC health %s\n", backend, m.Agent, m.Queue, ModelTarget,
		map[bool]string{true: "SERVING", false: "NOT_SERVING"}[m.Serving])
	return nil
}
