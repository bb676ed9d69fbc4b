package busauth

// Operator is the operator's public key: the subject of OperatorJWT, which
// servers trust and `vigil auth show` prints.
func (s *Set) Operator() string {
	pub, _ := s.operator.PublicKey()
	return pub
}
