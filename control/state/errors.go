package state

import (
	"errors"
	"fmt"
)

// Kinds of refusal a change can end with. Callers test them with
// errors.Is; the API server maps them to status codes. Anything else a
// change returns is bad input.
var (
	ErrNotFound = errors.New("not found")
	ErrConflict = errors.New("conflict")
)

// kindError is a message of one kind: it prints as the message alone.
type kindError struct {
	kind error
	msg  string
}

func (e *kindError) Error() string        { return e.msg }
func (e *kindError) Is(target error) bool { return target == e.kind }

// NotFound is an ErrNotFound with the given message.
func NotFound(format string, args ...any) error {
	return &kindError{ErrNotFound, fmt.Sprintf(format, args...)}
}

// Conflict is an ErrConflict with the given message.
func Conflict(format string, args ...any) error {
	return &kindError{ErrConflict, fmt.Sprintf(format, args...)}
}

// FieldError refuses one field's value. Field is named as the state file
// names it (ring_size, check.port); Value is the value as written ("" when
// the rule is about the field's presence); At is where the field sits in
// a whole state (vips[0] (10.0.0.1:80/tcp).backends[1]), "" for a VIP or
// backend checked alone. The CLI names its own flags from Field.
type FieldError struct {
	At, Field, Value, Reason string
}

func (e *FieldError) Error() string {
	s := e.At
	if e.Field != "" {
		if s != "" {
			s += "."
		}
		s += e.Field
	}
	if e.Value != "" {
		s += " " + e.Value
	}
	return s + ": " + e.Reason
}

// refuse is a FieldError of field with value (formatted with %v, or ""
// for none).
func refuse(field string, value any, format string, args ...any) error {
	v := ""
	if value != nil {
		v = fmt.Sprint(value)
	}
	return &FieldError{Field: field, Value: v, Reason: fmt.Sprintf(format, args...)}
}

// under names a field error's field as part of prefix (check.interval
// for interval under check); other errors are wrapped with the prefix.
func under(prefix string, err error) error {
	return prepend(err, prefix, func(e *FieldError) *string { return &e.Field })
}

// at places a field error at where (vips[0] (…), backends[1]).
func at(where string, err error) error {
	return prepend(err, where, func(e *FieldError) *string { return &e.At })
}

// prepend puts p in front of the part of a copy of err that part picks,
// joined by a dot; an error of another kind is wrapped with p.
func prepend(err error, p string, part func(*FieldError) *string) error {
	var fe *FieldError
	if err == nil {
		return nil
	}
	if !errors.As(err, &fe) {
		return fmt.Errorf("%s: %w", p, err)
	}
	out := *fe
	if s := part(&out); *s == "" {
		*s = p
	} else {
		*s = p + "." + *s
	}
	return &out
}
