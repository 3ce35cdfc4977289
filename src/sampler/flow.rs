//! Flow-matching samplers (GU App. C.7): Euler and adaptive Dormand–Prince 5(4).
