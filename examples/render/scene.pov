// A glass torus and a chrome sphere turning over a checkered floor.
// Rendered once per frame with +K<clock>, clock running from 0 to 1.
#version 3.7;
global_settings { assumed_gamma 1.0 }

camera {
  location <0, 2.2, -5.5>
  look_at <0, 0.6, 0>
}

light_source { <-4, 6, -4> color rgb 1.2 }
light_source { <5, 3, -2> color rgb 0.5 }

sky_sphere { pigment { gradient y color_map { [0 color rgb <0.55, 0.7, 1.0>] [1 color rgb <0.1, 0.2, 0.5>] } } }

plane {
  y, 0
  pigment { checker color rgb <0.9, 0.9, 0.85> color rgb <0.2, 0.3, 0.45> scale 0.8 }
  finish { reflection 0.15 }
}

torus {
  1.1, 0.28
  rotate <90, 0, 0>
  rotate <0, clock * 360, 0>
  translate <0, 1.45, 0>
  pigment { color rgb <1.0, 0.45, 0.1> }
  finish { phong 0.8 specular 0.5 reflection 0.1 }
}

sphere {
  <0, 0, 0>, 0.45
  translate <1.8 * cos(clock * 2 * pi), 0.45, 1.8 * sin(clock * 2 * pi)>
  pigment { color rgb <0.85, 0.85, 0.9> }
  finish { reflection 0.6 metallic specular 0.8 }
}
