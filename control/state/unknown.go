package state

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
)

// DecodeVIP reads one VIP as a shared store holds it. Fields this
// version does not know (a newer one's) are skipped here, and kept in
// the store by KeepUnknown when the VIP is written back.
func DecodeVIP(b []byte) (VIP, error) {
	var v VIP
	if err := json.Unmarshal(b, &v); err != nil {
		return VIP{}, fmt.Errorf("not a vip's JSON: %w", err)
	}
	return v, nil
}

// KeepUnknown is next, a VIP's JSON as this version writes it, with the
// fields of prev, the same VIP's JSON as a store held it, that this
// version does not know: at the VIP's level and in each of its backends
// (matched by address) and their check, agent and load. So a node of an
// older version that changes the VIP does not erase what a newer one
// wrote in it. next is returned as it is when there is nothing to keep.
func KeepUnknown(prev, next []byte) ([]byte, error) {
	var p, n map[string]json.RawMessage
	if json.Unmarshal(prev, &p) != nil {
		return next, nil // nothing readable to keep
	}
	if err := json.Unmarshal(next, &n); err != nil {
		return nil, fmt.Errorf("vip: %w", err)
	}
	if !keepFields(p, n, reflect.TypeFor[VIP]()) {
		return next, nil
	}
	return marshalSorted(n)
}

// keepFields copies into n the fields of p that t does not name, and
// recurses into the nested objects that may hold some; it reports whether
// n changed.
func keepFields(p, n map[string]json.RawMessage, t reflect.Type) bool {
	known := jsonFields(t)
	changed := false
	for k, raw := range p {
		if _, ok := known[k]; ok {
			continue
		}
		if _, ok := n[k]; !ok {
			n[k], changed = raw, true
		}
	}
	for name, ft := range known {
		switch {
		case ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct:
			changed = keepInList(p[name], n, name, ft.Elem()) || changed
		case ft.Kind() == reflect.Struct || (ft.Kind() == reflect.Pointer && ft.Elem().Kind() == reflect.Struct):
			if ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			changed = keepInObject(p[name], n, name, ft) || changed
		}
	}
	return changed
}

// keepInObject is keepFields for the object n[name], from p's.
func keepInObject(praw json.RawMessage, n map[string]json.RawMessage, name string, t reflect.Type) bool {
	var po, no map[string]json.RawMessage
	if json.Unmarshal(praw, &po) != nil || json.Unmarshal(n[name], &no) != nil || po == nil || no == nil {
		return false
	}
	if !keepFields(po, no, t) {
		return false
	}
	b, err := marshalSorted(no)
	if err != nil {
		return false
	}
	n[name] = b
	return true
}

// keepInList is keepFields for each element of the list n[name], from
// the element of p's with the same "addr" (backends).
func keepInList(praw json.RawMessage, n map[string]json.RawMessage, name string, t reflect.Type) bool {
	var pl, nl []map[string]json.RawMessage
	if json.Unmarshal(praw, &pl) != nil || json.Unmarshal(n[name], &nl) != nil {
		return false
	}
	byAddr := map[string]map[string]json.RawMessage{}
	for _, e := range pl {
		if a, ok := e["addr"]; ok {
			byAddr[string(a)] = e
		}
	}
	changed := false
	for _, e := range nl {
		if pe, ok := byAddr[string(e["addr"])]; ok && keepFields(pe, e, t) {
			changed = true
		}
	}
	if !changed {
		return false
	}
	b, err := json.Marshal(nl) // maps marshal with sorted keys
	if err != nil {
		return false
	}
	n[name] = b
	return true
}

// jsonFields are the JSON names of t's fields, with their types.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" || !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		out[name] = f.Type
	}
	return out
}

// marshalSorted writes m as a JSON object, keys sorted (as
// encoding/json writes maps), without escaping HTML.
func marshalSorted(m map[string]json.RawMessage) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(m); err != nil {
		return nil, err
	}
	return bytes.TrimRight(buf.Bytes(), "\n"), nil
}
