package main

import (
	"bytes"
	"encoding/json"
	"fmt"
)

// object is a JSON object that keeps its key order, so the emulator prints config objects in the order
// pd-server prints them. Values are kept as raw JSON text (numbers keep PD's formatting).
type object struct {
	keys   []string
	values map[string]json.RawMessage
}

func newObject() *object { return &object{values: map[string]json.RawMessage{}} }

func parseObject(data []byte) (*object, error) {
	o := newObject()
	if err := o.UnmarshalJSON(data); err != nil {
		return nil, err
	}
	return o, nil
}

func (o *object) UnmarshalJSON(data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	t, err := dec.Token()
	if err != nil {
		return err
	}
	if d, ok := t.(json.Delim); !ok || d != '{' {
		return fmt.Errorf("not a JSON object")
	}
	o.keys, o.values = nil, map[string]json.RawMessage{}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return err
		}
		k, _ := t.(string)
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return err
		}
		o.set(k, v)
	}
	return nil
}

func (o *object) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, k := range o.keys {
		if i > 0 {
			b.WriteByte(',')
		}
		kb, _ := json.Marshal(k)
		b.Write(kb)
		b.WriteByte(':')
		v := o.values[k]
		if len(v) == 0 {
			v = json.RawMessage("null")
		}
		b.Write(v)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

func (o *object) set(k string, v json.RawMessage) {
	if _, ok := o.values[k]; !ok {
		o.keys = append(o.keys, k)
	}
	o.values[k] = append(json.RawMessage(nil), v...)
}

func (o *object) setValue(k string, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	o.set(k, b)
}

func (o *object) get(k string) (json.RawMessage, bool) {
	v, ok := o.values[k]
	return v, ok
}

func (o *object) child(k string) *object {
	v, ok := o.values[k]
	if !ok {
		return nil
	}
	c, err := parseObject(v)
	if err != nil {
		return nil
	}
	return c
}

func (o *object) clone() *object {
	c := newObject()
	for _, k := range o.keys {
		c.set(k, o.values[k])
	}
	return c
}
